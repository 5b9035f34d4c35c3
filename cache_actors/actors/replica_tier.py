"""`ReplicaTieredCache`: a replica-local tier of blocks in front of the node's shard.

Why: on the served path (issue 15), a cached request that follows the one
that wrote its prefix paid, over the in-process engine, an actor call for
its read lease, an XXH3 checksum of every block it read out of shared
memory, and a wait for the writer's write-behind (its prefix *is* the
writer's blocks): 70 ms over 206 ms for SmolLM2-135M. The in-process cache
pays none of these. So the replica keeps the blocks it computed or read in
a pool of its own (a `BaseKVCache` with its own budget and policy) and asks
the shard only when that pool has a shorter prefix than the request can
reuse. Every block the replica stores still goes to the shard as before
(write-through), so other replicas, the coordinator, the lower tiers and
persistence see all of them; a longer prefix the shard serves is copied
into the replica's pool when the request stores its own blocks.

Coherence: a block's key hashes its tokens, its whole prefix, the model and
the tenant, so a copy never goes stale; it must only go when blocks are
dropped on request (`blatam cache clear`, a tenant's clear). The shard then
moves a generation word in its shared pool (`SharedBlockPool.generation`):
this tier reads it before each lookup and store, without a call, and drops
its copies no request holds when it moved or the shard's pool changed (a
restarted shard). Where it cannot be read (shard dead or closed, another
node) the tier is not used. Its hits are counted as tier ``replica``.

The shard still hears of every request the tier served alone: the next call
to it carries them (`reuse_reports`), so its policy and the coordinator see
a prefix the replicas reuse as hot, not as never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from cache_actors.actors.client import DistributedHit, DistributedKVCache
from cache_actors.actors.spec import ShardSpec
from cache_actors.core.hashing import BlockHash
from cache_actors.core.kv_cache import BaseKVCache, PrefixHit
from cache_actors.core.kv_layout import block_views

#: The tier name in ``tier_blocks`` and the ``kv_cache_hit_tokens`` metric.
REPLICA_TIER = "replica"
#: The shard is asked only when it could add at least this many tokens to the replica's own prefix.
#: Why: a lookup there (a call, a checksum of every block leased) cost about what prefilling ~100 tokens
#: costs (24M Llama, 2,048-token prompt: 28 ms vs 20 ms for 64 tokens), and the usual shortfall is a
#: request's own new tail, which nobody has: a request sharing 1,984 of 2,048 tokens with the last one
#: asked the shard every time and read 85 ms against 57 for the in-process cache. LMCache likewise
#: retrieves whole 256-token chunks only.
MIN_FAR_GAIN_TOKENS = 128


@dataclass(slots=True)
class TieredHit:
    """The hit a request uses: the replica's own blocks or a lease on the shard's (never both)."""

    near: PrefixHit | None = None
    far: DistributedHit | None = None

    @property
    def num_blocks(self) -> int:
        if self.near is not None:
            return self.near.num_blocks
        return self.far.num_blocks if self.far is not None else 0


class ReplicaTieredCache:
    """The engine's cache backend (`KVCacheBackend`): ``near`` (this process) in front of ``far`` (the shard)."""

    def __init__(self, near: BaseKVCache, far: DistributedKVCache, *, min_far_gain_tokens: int = MIN_FAR_GAIN_TOKENS) -> None:
        if near.block_size != far.block_size or near.codec.part_specs() != far.codec.part_specs():
            raise ValueError("the replica tier must store blocks exactly as its shard does")
        self.near = near
        self.far = far
        self.codec = far.codec
        self.block_size = far.block_size
        self.min_far_gain_tokens = min_far_gain_tokens
        self._valid_for: tuple[str, int] | None = None  # the shard's (epoch, generation) the copies are valid for
        self.drops = 0  # times the copies were dropped: a clear on request or a new shard pool

    # --- coherence -------------------------------------------------------------------------------------
    def _near_usable(self) -> bool:
        """Whether the replica's copies may be used now (drops them first if the shard was cleared or replaced)."""
        token = self.far.coherence()
        if token is None:
            return False
        if token != self._valid_for:
            if self._valid_for is not None:
                self.near.drop_unheld()
                self.drops += 1
            self._valid_for = token
        return True

    # --- read path -------------------------------------------------------------------------------------
    def match(self, hashes: Sequence[BlockHash], *, limit: int | None = None, tenant: str | None = None) -> TieredHit:
        """The longer of the replica's and the shard's prefix (the replica's on a tie); the shard is asked only
        when the replica's falls short of ``limit`` by ``min_far_gain_tokens`` or more (`MIN_FAR_GAIN_TOKENS`)."""
        if not hashes:
            return TieredHit()
        reusable = len(hashes) if limit is None else max(0, min(limit, len(hashes)))
        self.far.count_query(reusable)
        near = self.near.match(hashes, limit=reusable) if self._near_usable() else None
        if near is not None and (reusable - near.num_blocks) * self.block_size < self.min_far_gain_tokens:
            self.far.note_reuse(hashes, near.num_blocks)  # the shard's policy still sees the request (`reuse_reports`)
            return self._used(TieredHit(near=near))
        far = self.far.lookup(hashes, reusable, tenant, own_writes=near is None)
        if near is not None and not self._near_usable():  # the reply showed a clear or a new pool
            self.near.release(near)
            near = None
        if near is not None and near.num_blocks and near.num_blocks >= far.num_blocks:
            self.far.release(far)
            return self._used(TieredHit(near=near))
        if near is not None:
            self.near.release(near)
        return self._used(TieredHit(far=far))

    def _used(self, hit: TieredHit) -> TieredHit:
        if hit.near is not None:
            self.far.count_hit({REPLICA_TIER: hit.near.num_blocks}, hit.near.num_blocks)
        elif hit.far is not None:
            self.far.count_hit(hit.far.tiers, hit.far.num_blocks)
        return hit

    def read(self, hit: TieredHit, out: torch.Tensor) -> None:
        """Decode the hit's blocks into a ``[L, 2, H, n*bs, D]`` prefix buffer."""
        if hit.num_blocks:
            self.read_blocks(hit, block_views(out, self.block_size))

    def read_blocks(self, hit: TieredHit, out: torch.Tensor) -> None:
        """Decode the hit's blocks into ``out [n, L, 2, H, bs, D]`` (any strides)."""
        if hit.near is not None:
            self.near.read_blocks(hit.near, out)
        elif hit.far is not None:
            self.far.read_blocks(hit.far, out)

    def release(self, hit: TieredHit) -> None:
        if hit.near is not None:
            self.near.release(hit.near)
        if hit.far is not None:
            self.far.release(hit.far)

    # --- write path ------------------------------------------------------------------------------------
    def store(self, hashes: Sequence[BlockHash], start: int, kv_blocks: Callable[[int, int], torch.Tensor], *,
              num_tokens: int | None = None, tenant: str | None = None) -> int:
        """Send blocks ``start..`` to the shard (`DistributedKVCache.store`) and keep every block of the chain
        the replica lacks, from its first missing one (a prefix the shard served is copied in too: ``kv_blocks``
        covers the whole chain). Returns the blocks sent to the shard."""
        sent = self.far.store(hashes, start, kv_blocks, num_tokens=num_tokens, tenant=tenant)
        if self._near_usable():
            first = 0
            while first < len(hashes) and self.near.contains(hashes[first]):
                first += 1
            if first < len(hashes):
                self.near.store(hashes, first, kv_blocks, num_tokens=num_tokens, tenant=tenant)
        return sent

    def flush_writes(self) -> None:
        self.far.flush_writes()

    # --- admin -------------------------------------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """The shard's stats (`DistributedKVCache.get_stats`) with this replica's tier under ``replica_tier``."""
        near = self.near.get_stats()
        keys = ("blocks", "capacity_blocks", "free_blocks", "bytes_used", "bytes_capacity", "stored_blocks", "evicted_blocks")
        return {**self.far.get_stats(), "replica_tier": {**{k: near[k] for k in keys}, "drops": self.drops}}

    @property
    def shard_name(self) -> str:
        return self.far.shard_name

    @property
    def spec(self) -> ShardSpec:
        return self.far.spec

    @property
    def tier_blocks(self) -> dict[str, int]:
        """Blocks of the hits used, per tier that served them (``replica`` for this one)."""
        return self.far.tier_blocks

    def clear(self) -> None:
        """Clear the shard (raises if it cannot now), then drop the replica's copies no request holds."""
        self.far.clear()
        self.near.drop_unheld()

    def __len__(self) -> int:
        return len(self.far)
