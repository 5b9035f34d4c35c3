"""`KVCacheShard`: the actor that owns one device's blocks.

It wraps a `ShardStore` whose pool lives in shared memory (`shm_pool`), so
clients on its node move block bytes themselves and only ask the shard for
leases: `match` (read lease on the longest prefix), `reserve`/`commit`
(write lease). Clients elsewhere use `get`/`put`, which copy blocks through
Ray's object store.

A miss is completed from elsewhere within ``timeouts.remote_fetch_s``: the
coordinator says where the missing blocks are cheapest (a peer shard, Redis,
disk); without a coordinator the shard probes its first tier directly (see `remote_fetch`). Fetched
blocks are verified against their checksums and inserted before the reply.

In the background (every ``event_flush_s``) the shard expires leases, writes
captured hot evictions to its tiers (demotion), sends its events to the
coordinator with sequence numbers and takes back the hashes the coordinator
found hot. Nothing in the background can fail a request.

The shard is an asyncio actor: one thread, so the store needs no locks, and
waiting on Redis, peers or the coordinator never blocks other calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray
from ray.exceptions import RayError

from cache_actors.actors.metrics import metrics
from cache_actors.actors.remote_fetch import RemoteFetcher
from cache_actors.actors.reuse_reports import Reuse
from cache_actors.actors.spec import ShardSpec
from cache_actors.actors.write_behind import Commit
from cache_actors.core.hashing import BlockHash
from cache_actors.core.persistence import (
    MANIFEST,
    PersistenceError,
    file_sha256,
    insert_verified_blocks,
    read_verified,
    snapshot_cache,
    write_snapshot,
)
from cache_actors.cluster.part_arrays import parts_from_numpy
from cache_actors.policies import make_policy
from cache_actors.cluster.shard_store import Entry, ShardStore
from cache_actors.cluster.shm_pool import PoolHandle, SharedBlockPool
from cache_actors.tiers import BlockTier, DiskTier, RedisTier, encode_block
from cache_actors.actors.worker_logs import route_package_logs

logger = logging.getLogger(__name__)

_HEARTBEAT_S = 1.0
#: A hot evicted block waits this long for a tier to come back before it is dropped.
_DEMOTION_MAX_AGE_S = 5.0
#: Background work waits this long after a match or reserve (a prefill is running) ...
_QUIET_AFTER_REQUEST_S = 0.1
#: ... but never longer than this in a row (a busy node still reports).
_MAX_HOLD_S = 1.0
#: Prefetch hints kept between two background rounds.
_MAX_HINTS = 16


@dataclass(slots=True)
class MatchReply:
    """A read lease: slots of the matched prefix in the pool of ``handle``."""

    epoch: str
    handle: PoolHandle | None  # None when the caller already maps this epoch's pool
    lease: int = 0
    slots: list[int] = field(default_factory=list)
    checksums: list[bytes] = field(default_factory=list)
    tiers: dict[str, int] = field(default_factory=dict)  # blocks per tier that served them


@dataclass(slots=True)
class ReserveReply:
    epoch: str
    handle: PoolHandle
    lease: int = 0
    slots: list[tuple[int, int]] = field(default_factory=list)  # (position in the chain, slot)


class KVCacheShard:
    """One device's block store, its lower tiers and its link to the coordinator."""

    def __init__(self, spec: ShardSpec, name: str, device: str,
                 find_coordinator: Callable[[ShardSpec], Any] | None = None) -> None:
        """``find_coordinator(spec)`` returns the coordinator's handle, creating it if it is gone
        (`placement.get_or_create_coordinator`, handed in so this module need not import the
        coordinator's); None: this shard works alone."""
        route_package_logs()
        self.spec = spec
        self._find_coordinator = find_coordinator
        self.name = name
        self.device = device
        self.epoch = uuid.uuid4().hex[:12]
        self.node_id = ray.get_runtime_context().get_node_id()
        self.codec = spec.make_codec()
        self._part_dtypes = {n: str(d).removeprefix("torch.") for n, (_, d) in self.codec.part_specs().items()}
        self.tiers: list[BlockTier] = []
        if spec.redis_url:
            self.tiers.append(RedisTier(spec.redis_url, key_prefix=spec.redis_prefix(), timeout_s=spec.timeouts.tier_op_s, ttl_s=spec.redis_ttl_s))
        if spec.disk_tier_path:
            self.tiers.append(DiskTier(os.path.join(spec.disk_tier_path, spec.fingerprint()), timeout_s=spec.timeouts.remote_fetch_s))
        pool = SharedBlockPool.create(self.codec.part_specs(), spec.num_blocks, label=device, epoch=self.epoch)
        self.store = ShardStore(
            codec=self.codec, block_size=spec.block_size, num_blocks=spec.num_blocks, policy=make_policy(spec.policy),
            pool=pool, lease_ttl_s=spec.timeouts.lease_s, demote_min_hits=spec.demote_min_hits,
            capture_demotions=bool(self.tiers), first_lease_id=secrets.randbits(48) << 12,
        )
        self.pool = pool
        self.counters: dict[str, int] = defaultdict(int)
        self._exported: dict[str, int] = defaultdict(int)
        self._coordinator: Any = None
        self._coordinator_down_until = 0.0
        self._last_report = 0.0
        self._hints: list[BlockHash] = []
        self._quiet_until = 0.0
        # Whether another shard may hold blocks (see `_remote_may_help`): assumed until the coordinator says no,
        # as of the coordinator's announcement time (a reply computed before an announcement must not undo it).
        self._others_hold_blocks, self._others_as_of_ns = True, 0
        self.fetcher = RemoteFetcher(
            name=name, node_id=self.node_id, spec=spec, store=self.store, tiers=self.tiers,
            coordinator=self._coordinator_handle, on_coordinator_failure=self._coordinator_failed,
            counters=self.counters, count_mismatch=self._count_mismatch,
        )
        loop = asyncio.get_running_loop()
        for tier in self.tiers:
            if isinstance(tier, RedisTier):
                loop.create_task(tier.warm_up())
        self._background_task = loop.create_task(self._background())
        logger.info("shard %s started (epoch %s, %d blocks)", name, self.epoch, spec.num_blocks)

    # --- identity -----------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return {"name": self.name, "epoch": self.epoch, "node_id": self.node_id, "device": self.device, "pid": os.getpid(),
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "num_blocks": self.spec.num_blocks}

    def pool_handle(self) -> PoolHandle:
        return self.pool.handle

    # --- same-node data plane: leases ------------------------------------------------------------
    async def match(
        self, hashes: Sequence[BlockHash], allow_remote: bool = True, known_epoch: str | None = None,
        commits: Sequence[Commit] = (), limit: int | None = None, tenant: str | None = None,
        reuse: Sequence[Reuse] = (),
    ) -> MatchReply:
        """Lease the longest prefix of ``hashes`` (at most ``limit`` blocks), completing a miss from peers or tiers first.

        ``hashes`` are all the full blocks of the request: the local policy
        sees all of them (learning policies need whole requests); ``limit``
        caps what the client reuses, and what is fetched from elsewhere.
        ``commits`` are the caller's `commit` arguments not known to be applied
        (`write_behind.PendingCommits`), applied first: the caller sees its own
        writes. One that was applied already finds its lease gone and does nothing.
        ``tenant`` (`hashing.tenant_tag`) tags a chain's first block if it is fetched from elsewhere.
        ``reuse``: the caller's requests served without a call here (`note_reuse`), shown to the policy first.
        """
        self.commit_many(commits)
        self.note_reuse(reuse)
        self._busy()
        wanted = len(hashes) if limit is None else max(0, min(limit, len(hashes)))
        result = self.store.lookup(hashes, limit=wanted, request=True)
        tiers = {"device": len(result.slots)}
        if allow_remote and len(result.slots) < wanted:
            if not self._remote_may_help():
                self.counters["remote_lookups_skipped"] += 1
            else:
                self.counters["remote_lookups"] += 1
                fetched = await self.fetcher.complete(hashes[:wanted], len(result.slots), tenant)
                if fetched:
                    again = self.store.lookup(hashes, limit=wanted)
                    self.store.release_lease(result.lease_id)
                    result = again
                    tiers.update(fetched)
        if result.slots and len(result.slots) == wanted:
            self._hints.append(hashes[wanted - 1])
        handle = None if known_epoch == self.epoch else self.pool.handle
        return MatchReply(self.epoch, handle, result.lease_id, result.slots, result.checksums, tiers)

    def _remote_may_help(self) -> bool:
        """Whether a miss could be completed from elsewhere: a tier, or a peer shard holding blocks.

        When neither exists (one node, no Redis or disk), asking the coordinator
        where the missing blocks are is a round trip that always answers
        "nowhere", paid by every request whose prompt is not all cached.
        """
        return bool(self.tiers) or self._others_hold_blocks

    def peers_hold_blocks(self, announced_ns: int) -> None:
        """The coordinator saw another shard start holding blocks: ask it about misses again."""
        self._note_others(True, announced_ns)

    def _note_others(self, hold: bool, as_of_ns: int) -> None:
        if as_of_ns >= self._others_as_of_ns:
            self._others_hold_blocks, self._others_as_of_ns = hold, as_of_ns

    def release(self, lease: int) -> bool:
        return self.store.release_lease(lease)

    def reserve(self, hashes: Sequence[BlockHash], start: int, tenant: str | None = None,
                commits: Sequence[Commit] = (), reuse: Sequence[Reuse] = ()) -> ReserveReply:
        """Slots for blocks ``start..`` of a chain, after applying the caller's ``commits`` and ``reuse`` (as `match` does)."""
        self.commit_many(commits)
        self.note_reuse(reuse)
        self._busy()
        lease, slots = self.store.reserve(hashes, start, tenant)
        return ReserveReply(self.epoch, self.pool.handle, lease, slots)

    def note_reuse(self, reports: Sequence[Reuse]) -> int:
        """Requests a client's replica tier served from its own copies (`reuse_reports`): the policy and the
        coordinator see them as hits here, so a prefix every replica reuses does not look cold. Blocks touched."""
        if not reports:
            return 0
        return self.store.note_reuse(reports)

    def commit(self, lease: int, checksums: Sequence[bytes], last_hash: BlockHash | None = None) -> int:
        stored = self.store.commit(lease, checksums)
        if stored and last_hash is not None:
            self._hints.append(last_hash)
        return stored

    def commit_many(self, commits: Sequence[Commit]) -> int:
        """`commit` each ``(lease, checksums, last hash)``; blocks stored in all."""
        return sum(self.commit(lease, checksums, last_hash) for lease, checksums, last_hash in commits)

    # --- object-store data plane (other nodes, peers) --------------------------------------------
    def get(
        self, hashes: Sequence[BlockHash], limit: int | None = None, request: bool = False,
    ) -> tuple[list[Entry], dict[str, np.ndarray]]:
        """Copies of the longest cached prefix (at most ``limit``): ``([(hash, parent, checksum)], parts)``.

        ``request``: a client's whole request (its policy sees every block, its hit counts); peers leave it off.
        """
        if request:
            self._busy()
        return self.store.read_blocks(hashes, limit=limit, request=request)

    def put(self, entries: Sequence[Entry], parts: dict[str, np.ndarray], tenant: str | None = None) -> int:
        """Store blocks sent by value; rows that fail their checksum are refused."""
        inserted, mismatches = self.store.insert_verified(entries, parts_from_numpy(parts, self.codec.part_specs()), tenant)
        self._count_mismatch("put", mismatches)
        return inserted

    # --- fetching from elsewhere -----------------------------------------------------------------
    async def prefetch(self, parent: BlockHash, runs: list[tuple[str, list[BlockHash]]]) -> int:
        """Pull blocks the coordinator expects next (bounded by ``timeouts.prefetch_s``)."""
        return await self.fetcher.prefetch(parent, runs)

    def _send_hints(self) -> None:
        """Tell the coordinator which chains were just stored or served (it plans prefetches)."""
        hints, self._hints = self._hints[-_MAX_HINTS:], []
        if self.spec.prefetch_size <= 0 or not hints:
            return
        coordinator = self._coordinator_handle()
        if coordinator is not None:
            coordinator.hints.remote(self.name, self.node_id, list(dict.fromkeys(hints)))  # fire and forget

    # --- coordinator link ------------------------------------------------------------------------
    def _coordinator_handle(self) -> Any:
        if time.monotonic() < self._coordinator_down_until:
            return None
        if self._coordinator is None:
            if self._find_coordinator is None:
                return None
            try:
                self._coordinator = self._find_coordinator(self.spec)
                # A coordinator that another cache's shard re-created does not know ours (nor our Redis).
                self._coordinator.register_spec.remote(self.spec)
            except (RayError, ValueError) as exc:
                self._coordinator_failed(exc)
                return None
        return self._coordinator

    def _coordinator_failed(self, exc: BaseException) -> None:
        logger.warning("shard %s: coordinator unavailable (%s)", self.name, type(exc).__name__)
        self.counters["coordinator_failures"] += 1
        self._coordinator = None
        self._coordinator_down_until = time.monotonic() + self.spec.timeouts.coordinator_backoff_s

    async def _report(self) -> None:
        now = time.monotonic()
        if not self.store.has_events and now - self._last_report < _HEARTBEAT_S:
            return
        coordinator = self._coordinator_handle()
        if coordinator is None:
            return  # events wait (bounded); a gap makes the coordinator resync
        first_seq, events = self.store.take_events()
        self._last_report = now
        try:
            reply = await asyncio.wait_for(
                coordinator.report.remote(self.name, self.node_id, self.epoch, first_seq, events), self.spec.timeouts.report_s
            )
        except (RayError, asyncio.TimeoutError, TimeoutError) as exc:
            # Maybe delivered, maybe not: send again (the coordinator skips sequence numbers it has).
            self.store.return_events(events)
            self._coordinator_failed(exc)
            self._others_hold_blocks = True  # until a coordinator answers again
            return
        self._note_others(reply.others_hold_blocks, reply.announced_ns)
        if reply.hot:
            self.store.mark_hot(reply.hot)

    # --- demotion --------------------------------------------------------------------------------
    async def _demote(self) -> None:
        """Write captured hot evictions to the first tier that takes them; retry a while, then drop."""
        retry = []
        for demotion in self.store.take_demotions():
            blob = encode_block(demotion.parts, codec=self.codec.name, dtypes=self._part_dtypes, checksum=demotion.checksum,
                                compression=self.spec.compression)
            for tier in self.tiers:
                if await tier.put(demotion.block_hash, blob):
                    self.store.note_demoted(demotion.block_hash, tier.name)
                    self.counters[f"demoted_{tier.name}"] += 1
                    break
            else:
                retry.append(demotion)
        if retry:
            self.store.retry_demotions(retry, _DEMOTION_MAX_AGE_S)

    # --- background ------------------------------------------------------------------------------
    def _busy(self) -> None:
        """A request is starting its prefill on this node: hold back background work a moment."""
        self._quiet_until = time.monotonic() + _QUIET_AFTER_REQUEST_S

    async def _background(self) -> None:
        held_since: float | None = None
        while True:
            await asyncio.sleep(self.spec.event_flush_s)
            now = time.monotonic()
            # NOTE: demotion (compression, Redis), reports and hints cost CPU in this and
            # the coordinator's process; right after a match or reserve the node's cores
            # belong to the prefill that follows, so they wait (at most _MAX_HOLD_S).
            if now < self._quiet_until and (held_since is None or now - held_since < _MAX_HOLD_S):
                held_since = held_since or now
                continue
            held_since = None
            try:
                self.store.expire_leases()
                await self._demote()
                await self._report()
                self._send_hints()
                self._export_metrics()
            except Exception:  # noqa: BLE001 - the loop must survive anything; the next round retries
                logger.exception("shard %s: background step failed", self.name)

    def _count_mismatch(self, tier: str, count: int) -> None:
        if count:
            self.counters["checksum_mismatches"] += count
            metrics().add(metrics().checksum_mismatches, count, tier=tier)

    def _export_metrics(self) -> None:
        m = metrics()
        values = {"stored": self.store.counters.stored, "evicted": self.store.counters.evicted,
                  "prefetched": self.counters["prefetched_blocks"]}
        for tier in self.tiers:
            values[f"demoted_{tier.name}"] = self.counters[f"demoted_{tier.name}"]
        for key, value in values.items():
            delta, self._exported[key] = value - self._exported[key], value
            if key.startswith("demoted_"):
                m.add(m.demoted_blocks, delta, shard=self.name, tier=key.removeprefix("demoted_"))
            else:
                m.add({"stored": m.stored_blocks, "evicted": m.evicted_blocks, "prefetched": m.prefetched_blocks}[key], delta, shard=self.name)
        m.bytes_used.set(self.store.pool.bytes_used, tags={"shard": self.name})

    # --- admin -----------------------------------------------------------------------------------
    def dump_index(self) -> tuple[str, int, list[tuple[BlockHash, BlockHash | None, int]], list[tuple[BlockHash, str]]]:
        """``(epoch, seq, blocks, tier records)`` for a coordinator's resync (see `ShardStore.dump`)."""
        seq, entries, tiers = self.store.dump()
        return self.epoch, seq, entries, tiers

    def mark_hot(self, hashes: Sequence[BlockHash]) -> int:
        return self.store.mark_hot(hashes)

    def reject(self, lease: int, keep: int, block_hash: BlockHash) -> int:
        """A reader found ``block_hash`` (block ``keep`` of its lease) corrupt.

        The lease keeps the verified blocks before it; the bad block and
        everything below it leave the cache, so the next writer stores them afresh.
        """
        self._count_mismatch("device", 1)
        self.store.truncate_lease(lease, keep)
        return self.store.drop([block_hash])

    def clear(self, tenant: str | None = None) -> dict[str, int]:
        """Drop every block, or (``tenant``: a `hashing.tenant_tag`) that tenant's chains but those in use now.

        ``{"removed": blocks, "in_use": blocks kept}``; a whole clear raises while clients hold leases.
        Either way the pool's generation moves on, so clients drop their replica-local copies (`replica_tier`)."""
        if tenant:
            removed, in_use = self.store.clear_tenant(tenant)
            self.pool.bump_generation()
            return {"removed": removed, "in_use": in_use}
        removed = len(self.store.index)
        self.store.clear()
        self.pool.bump_generation()
        return {"removed": removed, "in_use": 0}

    def stats(self) -> dict[str, Any]:
        return {
            **self.store.get_stats(), **self.counters, "name": self.name, "epoch": self.epoch, "node_id": self.node_id,
            "device": self.device, "tiers": {t.name: t.counters.as_dict() for t in self.tiers},
        }

    # --- persistence (blatam cache persist / load) -------------------------------------------------------
    def _namespace(self) -> dict[str, Any]:
        """What a persisted part must match to be loaded here (blocks of another model or layout are refused)."""
        return {"kind": "kv-shard", "fingerprint": self.spec.fingerprint(), "model_id": self.spec.model_id,
                "model_dtype": self.spec.model_dtype, "kv_layout": self.spec.kv_layout}

    async def persist(self, directory: str) -> dict[str, Any]:
        """Write this shard's blocks to `directory`: copied on the loop (requests wait for the copy only), then
        checksummed and written in a thread. Returns the block count and the manifest's SHA-256."""
        snapshot = snapshot_cache(self.store, self._namespace())
        written = await asyncio.to_thread(write_snapshot, snapshot, directory)
        digest = await asyncio.to_thread(file_sha256, Path(directory) / MANIFEST)
        return {"blocks": written, "manifest_sha256": digest}

    async def verify_persisted(self, directory: str) -> int:
        """Check a part completely without loading it (`PersistenceError` otherwise); the blocks it holds."""
        blocks = await asyncio.to_thread(read_verified, self.store, self._namespace(), directory)
        if len(blocks.entries) > self.spec.num_blocks:
            raise PersistenceError(f"{directory}: {len(blocks.entries)} blocks, this shard holds {self.spec.num_blocks}")
        return len(blocks.entries)

    async def load_persisted(self, directory: str) -> int:
        """Verify a part again (it may have changed since `verify_persisted`), then insert it: blocks added."""
        blocks = await asyncio.to_thread(read_verified, self.store, self._namespace(), directory)
        return insert_verified_blocks(self.store, blocks, directory)

    async def probe_tiers(self) -> dict[str, dict[str, Any]]:
        """Each lower tier's reachability now (`blatam status`), with its counters."""
        out = {}
        for tier in self.tiers:
            reachable, detail = await tier.probe()
            out[tier.name] = {"reachable": reachable, "detail": detail, **tier.counters.as_dict()}
        return out

    async def close(self) -> None:
        """Stop the background loop and release tier connections (before a planned kill)."""
        self._background_task.cancel()
        for tier in self.tiers:
            await tier.close()
        self.pool.close()


ShardActor = ray.remote(KVCacheShard)
