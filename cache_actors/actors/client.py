"""`DistributedKVCache`: the engine's cache backend when the cache runs on Ray.

It has the shape of `BaseKVCache` that the engine uses (`match`, `read`,
`release`, `store`, `get_stats`, `clear`, ``codec``, ``block_size``) and
talks to the shard of its own device:

- **Same node** (the normal case): the shard's pool is mapped into this
  process (`shm_pool`). ``match`` is one call that returns a read lease
  (slots + checksums); the client verifies the checksums and decodes the
  blocks straight from shared memory into the prefix buffer: one copy per
  byte, as in one process. ``store`` asks for slots (``reserve``) and returns;
  the encoded blocks are copied into them and committed once the reply is in
  (`write_behind`), without the model's thread waiting for either.
- **Other node** (no shared memory): ``get``/``put`` move copies through
  Ray's object store as numpy arrays (zero-copy on read).

Why not the object store on the same node too: measured here, a 32 MiB
`ray.put` takes ~18 ms (1.8 GB/s; fresh shared-memory pages per object) and an
actor returning a 31 MiB numpy prefix took ~105 ms, against ~3 ms for a copy
into warm memory and ~3.5 ms to `ray.get` 31 object refs. A prefix read must
cost about one memory copy to keep the actor path within 1.25x of the
in-process ideal, so the bytes stay in one long-lived mapping and only
leases cross the actor boundary.

Failures: every call has a timeout; a dead, restarting or slow shard, a
failed mapping or a checksum mismatch makes ``match`` return a shorter (or
empty) hit and ``store`` skip, counted in ``fallbacks`` and metrics. The
engine then recomputes, so a cache failure never fails a request.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import ray
import torch
from ray.exceptions import ActorDiedError, RayError

from cache_actors.actors.metrics import metrics
from cache_actors.actors.ray_join import join_ray
from cache_actors.actors.placement import get_or_create_coordinator, node_shards, pick_local_shard, warn_on_other_capacity
from cache_actors.actors.shard import MatchReply, ReserveReply
from cache_actors.actors.spec import ShardSpec, spec_from_config
from cache_actors.core.block_checksum import block_checksums, iter_block_checksums
from cache_actors.core.hashing import BlockHash
from cache_actors.core.kv_cache import slot_runs
from cache_actors.core.kv_layout import block_views
from cache_actors.actors.reuse_reports import SEND_ALONE_AT, PendingReuse
from cache_actors.actors.write_behind import PendingCommits, PendingWrite, WriteBehind, encode_blocks, fill_slots
from cache_actors.cluster.part_arrays import parts_from_numpy, parts_to_numpy
from cache_actors.cluster.shm_pool import SharedBlockPool

if TYPE_CHECKING:
    from cache_actors.engine.config import KVCacheConfig
    from cache_actors.engine.model_runner import ModelRunner

logger = logging.getLogger(__name__)

_RECONNECT_BACKOFF_S = 1.0


@dataclass(slots=True)
class DistributedHit:
    """A verified prefix: slots in the shared pool (same node) or copied parts (other node)."""

    num_blocks: int = 0
    lease: int = 0
    slots: list[int] = field(default_factory=list)
    pool: SharedBlockPool | None = None
    parts: dict[str, torch.Tensor] | None = None
    shard: Any = None
    released: bool = False
    tiers: dict[str, int] = field(default_factory=dict)  # blocks per tier that served them, in chain order


class DistributedKVCache:
    """Cache backend that goes through the local `KVCacheShard`."""

    def __init__(self, spec: ShardSpec, *, shard_name: str, shard: Any, same_node: bool) -> None:
        self.spec = spec
        self.codec = spec.make_codec()
        self.block_size = spec.block_size
        self.shard_name = shard_name
        self._shard = shard
        self._same_node = same_node
        self._pool: SharedBlockPool | None = None
        self._pending_commit: Any = None  # the last `put` (other node): awaited before the next read
        self._writes = WriteBehind(self._finish_write)
        self._commits = PendingCommits()
        self._reuse = PendingReuse()
        self._reconnect_after = 0.0
        self.fallbacks: dict[str, int] = defaultdict(int)
        self.tier_blocks: dict[str, int] = defaultdict(int)
        self.checksum_mismatches = 0
        self.queried_blocks = 0

    # --- connection ----------------------------------------------------------------------------------
    @classmethod
    def connect(cls, spec: ShardSpec, *, ray_address: str | None = None, shard_index: int | None = None) -> "DistributedKVCache":
        """Join (or start) Ray, make sure this node's shards and the coordinator exist, pick our shard.

        ``ray_address``: None starts a private local cluster (outside Ray); ``auto`` or ``host:port`` joins
        one, with a bounded wait (`ray_join`): a dead cluster raises `RayUnreachableError`, never hangs.
        """
        join_ray(ray_address, include_dashboard=False, log_to_driver=False)
        node_id = ray.get_runtime_context().get_node_id()
        try:
            coordinator = get_or_create_coordinator(spec)
            coordinator.register_spec.remote(spec)
        except RayError as exc:  # the cache works without it, minus prefetch and remote lookups
            logger.warning("KV cache coordinator unavailable at connect (%s)", exc)
        name, shard = pick_local_shard(spec, node_shards(spec, node_id), index=shard_index)
        identity = ray.get(shard.ping.remote(), timeout=60)  # wait until it is up (first start maps its pool)
        logger.info("KV cache client on node %s uses shard %s", node_id, name)
        warn_on_other_capacity(spec, name, identity)
        return cls(spec, shard_name=name, shard=shard, same_node=True)

    @classmethod
    def from_config(cls, config: "KVCacheConfig", runner: "ModelRunner", num_blocks: int) -> "DistributedKVCache":
        """The client for an engine: shard spec from the config and the model's KV geometry."""
        return cls.connect(
            spec_from_config(config, runner, num_blocks), ray_address=config.ray_address, shard_index=config.shard_index
        )

    def _call(self, method: Callable[[Any], Any], what: str) -> Any:
        """Run ``method(shard)`` with the lookup timeout; None (counted) on any failure."""
        return self._get(self._submit(method, what), what)

    def _submit(self, method: Callable[[Any], Any], what: str) -> Any:
        """Send ``method(shard)`` without waiting; None (counted) when there is no shard."""
        if not ray.is_initialized():  # shut down under us: any Ray call would start a new local cluster
            self._fallback(f"{what}_ray_down")
            return None
        if self._shard is None and not self._reconnect():
            self._fallback(f"{what}_no_shard")
            return None
        try:
            return method(self._shard)
        except RayError as exc:
            self._failed(exc, what)
            return None

    def _get(self, ref: Any, what: str) -> Any:
        """The result of a submitted call within the lookup timeout; None (counted) on any failure."""
        if ref is None:
            return None
        if not ray.is_initialized():
            self._fallback(f"{what}_ray_down")
            return None
        try:
            return ray.get(ref, timeout=self.spec.timeouts.lookup_s)
        except RayError as exc:
            self._failed(exc, what)
            return None

    def _failed(self, exc: RayError, what: str) -> None:
        self._fallback(f"{what}_{type(exc).__name__}")
        if isinstance(exc, ActorDiedError) and "restart" not in str(exc).lower():
            self._shard = None  # killed for good: find (or create) this node's shard again

    def _reconnect(self) -> bool:
        if time.monotonic() < self._reconnect_after:
            return False
        self._reconnect_after = time.monotonic() + _RECONNECT_BACKOFF_S
        try:
            self.shard_name, self._shard = pick_local_shard(self.spec, node_shards(self.spec, ray.get_runtime_context().get_node_id()))
        except (RayError, RuntimeError) as exc:
            logger.warning("KV cache client: no local shard (%s)", exc)
            return False
        return True

    def _attach(self, reply: MatchReply | ReserveReply) -> SharedBlockPool | None:
        if self._pool is not None and self._pool.handle.epoch == reply.epoch:
            return self._pool
        handle = reply.handle or self._call(lambda s: s.pool_handle.remote(), "pool_handle")
        if handle is None or handle.epoch != reply.epoch:
            return None
        try:
            self._pool = SharedBlockPool.attach(handle)
        except (OSError, ValueError) as exc:
            logger.warning("KV cache client: cannot map the shard's pool (%s); using the object store", exc)
            self._same_node = False
            self._fallback("map_pool")
            return None
        return self._pool

    def _fallback(self, reason: str) -> None:
        self.fallbacks[reason] += 1
        metrics().add(metrics().fallbacks, 1, reason=reason)

    # --- read path -------------------------------------------------------------------------------------
    def match(self, hashes: Sequence[BlockHash], *, limit: int | None = None, tenant: str | None = None) -> DistributedHit:
        """Longest verified cached prefix of ``hashes`` (at most ``limit`` blocks; held until `release`).

        The shard gets the whole chain and the limit (its policy learns from whole requests)."""
        if not hashes:
            return DistributedHit()
        reusable = len(hashes) if limit is None else max(0, min(limit, len(hashes)))
        self.count_query(reusable)
        hit = self.lookup(hashes, reusable, tenant)
        self.count_hit(hit.tiers, hit.num_blocks)
        return hit

    def lookup(self, hashes: Sequence[BlockHash], reusable: int, tenant: str | None = None, *,
               own_writes: bool = True) -> DistributedHit:
        """`match` without counting the query or the hit: a tier in front of this one (`replica_tier`)
        counts what it asked and which hit it used. ``own_writes=False``: do not wait for this client's
        writes in flight first (that tier holds them already)."""
        started = time.perf_counter()
        self._writes.complete(wait=own_writes)  # read our own writes: their slots filled and their commits sent
        if not self._same_node:
            self._await_pending_write()
        hit = self._match_local(hashes, reusable, tenant) if self._same_node else self._match_remote(hashes, reusable)
        metrics().fetch_latency_ms.observe((time.perf_counter() - started) * 1000, tags={"path": "client_match"})
        return hit

    def count_query(self, blocks: int) -> None:
        """Count ``blocks`` looked up (the hit rate's denominator)."""
        self.queried_blocks += blocks
        metrics().add(metrics().queried_tokens, blocks * self.block_size, shard=self.shard_name)

    def count_hit(self, tiers: dict[str, int], good: int) -> None:
        """Count the first ``good`` blocks of a hit by the tier that served them (device first, then chain order)."""
        left = good
        for tier, blocks in tiers.items():
            used = min(blocks, left)
            left -= used
            self.tier_blocks[tier] += used
            metrics().add(metrics().hit_tokens, used * self.block_size, shard=self.shard_name, tier=tier)

    def coherence(self) -> tuple[str, int] | None:
        """``(pool epoch, clear generation)`` of the shard this client maps, read without a call.

        A replica-local copy of the shard's blocks is valid while this stays the same (`replica_tier`).
        None where it cannot be told: not mapped yet, another node, or the shard dead or closed (a restarted
        shard is a new pool, seen at the next reply)."""
        pool = self._pool
        if not self._same_node or pool is None or not pool.owner_alive():
            return None
        return pool.handle.epoch, pool.generation

    def _await_pending_write(self) -> None:
        """Read our own writes: Ray does not order calls to an asyncio actor, so let the
        last commit/put land first (it was sent a whole request ago: usually done already)."""
        self._writes.complete(wait=True)
        if self._pending_commit is not None:
            ray.wait([self._pending_commit], timeout=self.spec.timeouts.lookup_s)
            self._pending_commit = None

    def _match_local(self, hashes: Sequence[BlockHash], limit: int, tenant: str | None) -> DistributedHit:
        known = self._pool.handle.epoch if self._pool is not None else None
        # Our commits ride along: applied before the lookup (see write_behind.PendingCommits).
        reply: MatchReply | None = self._call(
            lambda s: s.match.remote(list(hashes), True, known, self._commits.take(s), limit, tenant, self._reuse.take()),
            "match")
        if reply is None:
            return DistributedHit()
        if not reply.lease:
            if reply.handle is not None:
                self._attach(reply)  # map the pool at the first reply: `coherence` needs it, and so will the first store
            return DistributedHit()
        shard = self._shard
        pool = self._attach(reply)
        if pool is None:
            shard.release.remote(reply.lease)
            return DistributedHit()
        good = 0
        for actual, expected in zip(iter_block_checksums(pool.parts, reply.slots), reply.checksums):
            if actual != expected:
                self._mismatch()
                # Wait for it: the bad block must be gone before this request stores its blocks.
                self._call(lambda s: s.reject.remote(reply.lease, good, hashes[good]), "reject")
                break
            good += 1
        if not good:
            shard.release.remote(reply.lease)
            return DistributedHit()
        return DistributedHit(good, reply.lease, reply.slots[:good], pool=pool, shard=shard, tiers=reply.tiers)

    def _match_remote(self, hashes: Sequence[BlockHash], limit: int) -> DistributedHit:
        got = self._call(lambda s: s.get.remote(list(hashes), limit, True), "get")
        if not got or not got[0]:
            return DistributedHit()
        entries, arrays = got
        parts = parts_from_numpy(arrays, self.codec.part_specs())
        good = 0
        for row, actual in enumerate(block_checksums(parts, range(len(entries)))):
            if actual != entries[row][2]:
                self._mismatch()
                break
            good += 1
        if not good:
            return DistributedHit()
        return DistributedHit(good, parts={k: v[:good] for k, v in parts.items()}, tiers={"device": good})

    def _mismatch(self) -> None:
        self.checksum_mismatches += 1
        metrics().add(metrics().checksum_mismatches, 1, tier="device")
        self._fallback("checksum")

    def read(self, hit: DistributedHit, out: torch.Tensor) -> None:
        """Decode the hit's blocks into a ``[L, 2, H, n*bs, D]`` prefix buffer."""
        if hit.num_blocks:
            self.read_blocks(hit, block_views(out, self.block_size))

    def read_blocks(self, hit: DistributedHit, out: torch.Tensor) -> None:
        """Decode the hit's blocks into ``out [n, L, 2, H, bs, D]`` (any strides)."""
        assert not hit.released, "read after release"
        if not hit.num_blocks:
            return
        if hit.parts is not None:
            self.codec.decode_into({k: v.to(out.device) for k, v in hit.parts.items()}, out)
            return
        assert hit.pool is not None
        for start, stop, first_slot in slot_runs(hit.slots):
            parts = {name: t[first_slot : first_slot + stop - start].to(out.device) for name, t in hit.pool.parts.items()}
            self.codec.decode_into(parts, out[start:stop])

    def release(self, hit: DistributedHit) -> None:
        if hit.released:
            return
        hit.released = True
        if hit.lease and hit.shard is not None and ray.is_initialized():
            hit.shard.release.remote(hit.lease)  # fire and forget; the lease expires anyway

    # --- write path ------------------------------------------------------------------------------------
    def store(self, hashes: Sequence[BlockHash], start: int, kv_blocks: Callable[[int, int], torch.Tensor], *,
              num_tokens: int | None = None, tenant: str | None = None) -> int:
        """Cache blocks ``start..`` of a chain (its first block tagged ``tenant``); returns blocks sent (0 on failure).

        The blocks are encoded and checksummed now, while ``reserve`` is in
        flight, and written when its reply is in (`write_behind`): nothing here
        waits for the shard, except for an earlier write of this chain's parent
        block (the shard would decline the rest of a chain whose parent is
        pending). A reserve that fails is counted in ``fallbacks``; one
        the shard declines (no free slot) writes nothing, as before.
        """
        if start >= len(hashes):
            return 0
        self._writes.complete(wait=False)
        if start > 0:
            self._writes.complete_through(hashes[start - 1])  # the shard declines a chain whose parent is pending
        if not self._same_node:
            return self._store_remote(hashes, start, kv_blocks, tenant)
        ref = self._submit(
            lambda s: s.reserve.remote(list(hashes), start, tenant, self._commits.take(s), self._reuse.take()), "reserve")
        if ref is None:
            return 0
        positions = list(range(start, len(hashes)))
        encoded = encode_blocks(self.codec, kv_blocks, positions)  # usually every block after the hit is new
        sums = block_checksums(encoded, range(len(positions)))
        self._writes.add(PendingWrite(self._shard, ref, list(hashes), start, encoded, sums))
        return len(positions)

    def flush_writes(self) -> None:
        """Write every block still waiting for its slots and send their commits (the batcher calls this before it idles).

        Nothing once Ray is shut down in this process (an engine closed after it): a Ray call would start a new cluster."""
        if not ray.is_initialized():
            return
        self._writes.complete(wait=True)
        self._commits.send_alone()
        self._send_reuse()

    def note_reuse(self, hashes: Sequence[BlockHash], reused: int) -> None:
        """A tier in front served a request without asking the shard (``reused`` blocks from the front of
        ``hashes``): the shard hears of it with the next call (`reuse_reports`), or at once when many wait."""
        self._reuse.add(list(hashes), reused)
        if len(self._reuse) >= SEND_ALONE_AT:
            self._send_reuse()

    def _send_reuse(self) -> None:
        if len(self._reuse):
            self._submit(lambda s: s.note_reuse.remote(self._reuse.take()), "note_reuse")  # fire and forget

    @torch.inference_mode()  # the mapped pool may be an inference tensor (mapped during a match): the batcher's idle flush is not
    def _finish_write(self, write: PendingWrite) -> None:
        """Fill a pending write's slots; its commit rides on the next call to the shard (`PendingCommits`)."""
        reply: ReserveReply | None = self._get(write.reserve, "reserve")
        if reply is None or not reply.lease:
            return
        pool = self._attach(reply)
        if pool is None:
            write.shard.release.remote(reply.lease)
            return
        rows = [position - write.start for position, _ in reply.slots]
        fill_slots(pool.parts, write.encoded, rows, [slot for _, slot in reply.slots])
        self._commits.add(write.shard, (reply.lease, [write.sums[row] for row in rows], write.hashes[reply.slots[-1][0]]))

    def _store_remote(self, hashes: Sequence[BlockHash], start: int, kv_blocks: Callable[[int, int], torch.Tensor],
                      tenant: str | None) -> int:
        if self._shard is None and not self._reconnect():
            return 0
        positions = list(range(start, len(hashes)))
        encoded = encode_blocks(self.codec, kv_blocks, positions)
        sums = block_checksums(encoded, range(len(positions)))
        entries = [(hashes[p], hashes[p - 1] if p else None, s) for p, s in zip(positions, sums)]
        self._pending_commit = self._shard.put.remote(entries, parts_to_numpy(encoded), tenant)  # not awaited
        return len(positions)

    # --- admin -------------------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """The shard's stats plus this client's fallbacks and tier hits (zeros if the shard is away)."""
        shard_stats = self._call(lambda s: s.stats.remote(), "stats") or {
            "blocks": 0, "capacity_blocks": self.spec.num_blocks, "free_blocks": 0, "bytes_used": 0,
            "bytes_capacity": self.spec.num_blocks * self.codec.bytes_per_block(), "evicted_blocks": 0,
            "stored_blocks": 0, "shard_unavailable": True,
        }
        return {
            **shard_stats,
            "distributed": True,
            "shard": self.shard_name,
            "block_size": self.block_size,
            "codec": self.codec.name,
            "fallbacks": dict(self.fallbacks),
            "tier_blocks": dict(self.tier_blocks),
            "checksum_mismatches": self.checksum_mismatches,
            "queried_blocks": self.queried_blocks,
        }

    def clear(self) -> None:
        """Drop every block of this client's shard (raises if the shard cannot do it now)."""
        if self._shard is None:
            raise RuntimeError("no shard to clear")
        ray.get(self._shard.clear.remote(), timeout=self.spec.timeouts.lookup_s * 10)

    def __len__(self) -> int:
        return int(self.get_stats().get("blocks", 0))

