"""`BaseKVCache`: cached KV blocks = prefix index + block pool + codec + policy.

This is the documented extension point. The engine asks it for the longest
cached prefix of a prompt (`match`), copies those blocks into a prefix buffer
(`read`), lets go of them (`release`) and stores new full blocks (`store`).
When the pool is full, `store` calls `_evict(num_tokens)`; a subclass that
overrides `_evict` changes what is evicted (see `evictable_blocks` and
`evict_block`). The default asks the eviction policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import torch

from cache_actors.core.block_index import BlockIndex, BlockNode
from cache_actors.codecs import Codec
from cache_actors.core.hashing import TENANT_KEY, BlockHash
from cache_actors.core.kv_layout import block_views
from cache_actors.core.pool import BlockPool

if TYPE_CHECKING:  # annotations only: policies build on the core, never the other way
    from cache_actors.policies.base import EvictionPolicy


def slot_runs(slots: Sequence[int | None]) -> Iterable[tuple[int, int, int]]:
    """``(start, stop, first_slot)`` for each run of consecutive slots in ``slots``."""
    start = 0
    for index in range(1, len(slots) + 1):
        if index == len(slots) or slots[index] != slots[index - 1] + 1:  # type: ignore[operator]
            yield start, index, slots[start]  # type: ignore[misc]
            start = index


@dataclass(slots=True)
class PrefixHit:
    """Blocks of a matched prefix, held (locked) until `BaseKVCache.release`."""

    nodes: list[BlockNode] = field(default_factory=list)
    released: bool = False

    @property
    def num_blocks(self) -> int:
        return len(self.nodes)


@dataclass(slots=True)
class CacheCounters:
    """Monotonic counters (blocks), read by `BaseKVCache.get_stats`."""

    stored: int = 0
    evicted: int = 0
    not_admitted: int = 0
    no_room: int = 0


class BaseKVCache:
    """Block-level KV cache over a fixed pool."""

    def __init__(
        self,
        *,
        codec: Codec,
        block_size: int,
        num_blocks: int,
        policy: EvictionPolicy,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.monotonic,
        pool: BlockPool | None = None,
    ) -> None:
        self.codec = codec
        self.block_size = block_size
        # A caller may supply the pool (e.g. one in shared memory); it must fit the codec.
        if pool is not None and (pool.specs != codec.part_specs() or pool.num_blocks != num_blocks):
            raise ValueError("the supplied pool does not match the codec's parts or num_blocks")
        self.pool = pool if pool is not None else BlockPool(codec.part_specs(), num_blocks, device)
        self.index = BlockIndex(policy)
        if num_blocks > 0:
            policy.set_capacity(num_blocks)
        self.clock = clock
        self.counters = CacheCounters()

    # --- read path --------------------------------------------------------------------
    def match(self, hashes: Sequence[BlockHash], *, limit: int | None = None, tenant: str | None = None) -> PrefixHit:
        """Lock and return the longest cached prefix of ``hashes`` (at most ``limit`` blocks).

        ``hashes`` are all the full blocks of the request, so the policy sees the
        whole request (learning policies need it); ``limit`` caps what is reused.
        ``tenant`` matters only to a cache that fetches blocks from elsewhere (they are
        tagged as the tenant's); this one never does.
        """
        nodes = self.index.begin_request(hashes, self.clock())
        if limit is not None:
            nodes = nodes[:limit]
        if nodes:
            self.index.lock(nodes)
            self.index.touch(nodes, self.clock())
        return PrefixHit(nodes)

    def read(self, hit: PrefixHit, out: torch.Tensor) -> None:
        """Decode the hit's blocks into a ``[L, 2, H, n*bs, D]`` prefix buffer."""
        if hit.nodes:
            self.read_blocks(hit, block_views(out, self.block_size))

    def read_blocks(self, hit: PrefixHit, views: torch.Tensor) -> None:
        """Decode the hit's blocks into ``views [n, L, 2, H, bs, D]`` (any strides)."""
        assert not hit.released, "read after release"
        # Decode straight from the pool: runs of consecutive slots (a chain is
        # usually stored in one) are slices, so each byte is copied once.
        for start, stop, first_slot in slot_runs([node.slot for node in hit.nodes]):
            parts = {name: tensor[first_slot : first_slot + stop - start] for name, tensor in self.pool.parts.items()}
            self.codec.decode_into(parts, views[start:stop])

    def release(self, hit: PrefixHit) -> None:
        """Let go of a hit's blocks (they become evictable again)."""
        if hit.released:
            return
        hit.released = True
        self.index.unlock(hit.nodes, self.clock())

    def contains(self, block_hash: BlockHash) -> bool:
        return block_hash in self.index

    def flush_writes(self) -> None:
        """`store` here is synchronous: there is never a write to finish (`KVCacheBackend.flush_writes`)."""

    # --- write path -------------------------------------------------------------------
    def store(
        self,
        hashes: Sequence[BlockHash],
        start: int,
        kv_blocks: Callable[[int, int], torch.Tensor],
        *,
        num_tokens: int | None = None,
        tenant: str | None = None,
    ) -> int:
        """Cache blocks ``start..len(hashes)`` of a chain whose blocks ``< start`` are cached.

        ``kv_blocks(first, count)`` returns ``[count, L, 2, H, bs, D]`` for those
        block positions; it is called once, for the run of blocks actually
        stored. Stops at the first block that is not admitted or finds no room
        (a block without its parent saves nothing). Returns blocks stored.
        ``tenant`` (`hashing.tenant_tag`) tags a chain's first block, so a tenant's blocks can be found.
        """
        now = self.clock()
        held, new = self._claim_chain(hashes, start, now, num_tokens=num_tokens or self.block_size, tenant=tenant)
        try:
            if new:
                self._write(new, kv_blocks)
        except BaseException:
            self._undo_claim(held, new, now)  # never keep a block whose bytes were not written
            raise
        self.index.unlock(held, self.clock())
        self.counters.stored += len(new)
        return len(new)

    def _claim_chain(
        self,
        hashes: Sequence[BlockHash],
        start: int,
        now: float,
        *,
        num_tokens: int,
        usable: Callable[[BlockNode], bool] = lambda node: True,
        tenant: str | None = None,
    ) -> tuple[list[BlockNode], list[tuple[int, BlockNode]]]:
        """Lock blocks ``start..`` of a chain whose blocks ``< start`` are cached, inserting missing ones.

        Returns ``(held, new)``: every block locked (the parent and the inserted
        ones included) and the inserted ones with their positions. Stops at the first block that is
        not admitted, finds no room, or is cached but not ``usable``; a parent
        that is gone or not usable means nothing can be claimed (a block
        without its parent saves nothing). Holding the whole chain means that
        evicting for a later block can never take an earlier one. On an
        exception nothing stays inserted or locked.
        """
        parent = self.index.get(hashes[start - 1]) if start > 0 else None
        if start > 0 and (parent is None or not usable(parent)):
            return [], []
        # The parent is held too: unheld, it is an evictable leaf that making room for its first
        # child could evict (a shard's client releases its read lease before it reserves).
        held: list[BlockNode] = [parent] if parent is not None else []
        self.index.lock(held)
        new: list[tuple[int, BlockNode]] = []
        try:
            for position in range(start, len(hashes)):
                key = hashes[position]
                node = self.index.get(key)
                if node is None:
                    if not self.index.policy.admit(key, parent, now):
                        self.counters.not_admitted += 1
                        break
                    slot = self._allocate(len(hashes) - position)
                    if slot is None:
                        self.counters.no_room += 1
                        break
                    node = self.index.insert(key, parent, now, slot=slot, num_tokens=num_tokens)
                    if parent is None and tenant:
                        node.extra[TENANT_KEY] = tenant
                    new.append((position, node))
                elif not usable(node):
                    break
                self.index.lock([node])
                held.append(node)
                parent = node
        except BaseException:
            self._undo_claim(held, new, now)
            raise
        return held, new

    def _undo_claim(self, held: list[BlockNode], new: list[tuple[int, BlockNode]], now: float) -> None:
        """Remove the blocks a claim inserted (children first) and unlock the rest."""
        for _, node in reversed(new):
            if node in held:
                node.ref_cnt -= 1
                held.remove(node)
            self.index.remove(node, now)
            self.pool.free(node.slot)
        self.index.unlock(held, self.clock())

    def _write(self, new: list[tuple[int, BlockNode]], kv_blocks: Callable[[int, int], torch.Tensor]) -> None:
        first, last = new[0][0], new[-1][0]
        kv = kv_blocks(first, last - first + 1)
        rows = [position - first for position, _ in new]
        if rows != list(range(len(rows))):
            kv = kv[torch.tensor(rows, dtype=torch.long)]
        self.pool.write([node.slot for _, node in new], self.codec.encode(kv))

    def _allocate(self, wanted_blocks: int) -> int | None:
        slot = self.pool.allocate()
        if slot is None:
            # Free room for the rest of this chain at once: one policy pass, not one per block.
            self._evict(max(wanted_blocks, 1) * self.block_size)
            slot = self.pool.allocate()
        return slot

    # --- eviction (the extension point) -------------------------------------------------
    def _evict(self, num_tokens: int) -> int:
        """Free room for at least ``num_tokens`` tokens; return the tokens freed.

        Override to change what is evicted: choose among `evictable_blocks()`
        and call `evict_block(node)` for each victim.
        """
        freed = 0
        now = self.clock()
        while freed < num_tokens:
            node = self.index.pop_victim(now)
            if node is None:
                break
            self._free_slot(node)
            freed += self.block_size
        return freed

    def evictable_blocks(self) -> list[BlockNode]:
        """Blocks that may be evicted now: unreferenced leaves."""
        return self.index.evictable_nodes()

    def evict_block(self, node: BlockNode) -> None:
        """Evict one block chosen by a custom `_evict` (must be evictable)."""
        if not node.evictable:
            raise ValueError("only unreferenced leaf blocks can be evicted")
        self.index.remove(node, self.clock())
        self._free_slot(node)

    def _free_slot(self, node: BlockNode) -> None:
        assert node.slot is not None
        self.pool.free(node.slot)
        self.counters.evicted += 1

    # --- bulk access for persistence --------------------------------------------------
    def blocks_in_order(self) -> list[BlockNode]:
        """Every cached block, parents before children."""
        return sorted(self.index, key=lambda node: node.depth)

    def read_encoded(self, nodes: Sequence[BlockNode]) -> dict[str, torch.Tensor]:
        return self.pool.read([node.slot for node in nodes])

    def insert_encoded(
        self, entries: Sequence[tuple[BlockHash, BlockHash | None, int]], parts: dict[str, torch.Tensor],
        tenants: Mapping[BlockHash, str] | None = None,
    ) -> int:
        """Add already-encoded blocks ``(hash, parent hash, hits)``, parents first; ``tenants`` tags chain roots.

        All or nothing: raises ValueError (and changes nothing) if a parent is
        unknown or the blocks do not fit in free plus evictable room.
        """
        new_keys = {h for h, _, _ in entries if h not in self.index}
        seen: set[BlockHash] = set()
        for block_hash, parent_hash, _ in entries:
            if parent_hash is not None and parent_hash not in seen and parent_hash not in self.index:
                raise ValueError("block listed before its parent (or parent missing)")
            seen.add(block_hash)
        room = self.pool.num_free + len(self.index.evictable_nodes())
        if len(new_keys) > room:
            raise ValueError(f"{len(new_keys)} blocks do not fit: room for {room}")
        if len(new_keys) > self.pool.num_free:
            self._evict((len(new_keys) - self.pool.num_free) * self.block_size)
            if len(new_keys) > self.pool.num_free:
                raise ValueError("could not free enough room for the loaded blocks")
        now = self.clock()
        slots: list[int] = []
        rows: list[int] = []
        for row, (block_hash, parent_hash, hits) in enumerate(entries):
            if block_hash in self.index:
                continue
            parent = self.index.get(parent_hash) if parent_hash is not None else None
            slot = self.pool.allocate()
            assert slot is not None
            node = self.index.insert(block_hash, parent, now, slot=slot, num_tokens=self.block_size)
            node.hits = hits
            if parent is None and tenants and tenants.get(block_hash):
                node.extra[TENANT_KEY] = tenants[block_hash]
            slots.append(slot)
            rows.append(row)
        if slots:
            index = torch.tensor(rows, dtype=torch.long)
            self.pool.write(slots, {name: tensor.index_select(0, index) for name, tensor in parts.items()})
        self.counters.stored += len(slots)
        return len(slots)

    # --- admin -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def tenant_subtrees(self, tenant: str) -> list[list[BlockNode]]:
        """Every chain whose first block is tagged ``tenant``: that block and all below it, parents first.

        One pass over the index (each node's root found once), not a walk per root."""
        root_of: dict[int, BlockNode] = {}
        groups: dict[int, list[BlockNode]] = {}
        for node in self.index:
            path = []
            walk: BlockNode | None = node
            while walk is not None and id(walk) not in root_of:
                path.append(walk)
                walk = walk.parent
            root = root_of[id(walk)] if walk is not None else path[-1]
            for seen in path:
                root_of[id(seen)] = root
            if root.extra.get(TENANT_KEY) == tenant:
                groups.setdefault(id(root), []).append(node)
        return [sorted(nodes, key=lambda n: n.depth) for nodes in groups.values()]

    def clear_tenant(self, tenant: str) -> tuple[int, int]:
        """Drop a tenant's chains (`tenant_subtrees`); a chain a request holds right now stays whole.

        Returns ``(blocks removed, blocks kept because in use)``."""
        removed = in_use = 0
        now = self.clock()
        for subtree in self.tenant_subtrees(tenant):
            if any(node.ref_cnt for node in subtree):
                in_use += len(subtree)
                continue
            for node in reversed(subtree):  # children first: only leaves can be removed
                self._remove_block(node, now)
                removed += 1
        return removed, in_use

    def drop_unheld(self) -> int:
        """Drop every block no request holds (children first; a held chain stays whole). Returns blocks removed.

        For a cache whose blocks must go when another store was cleared on request (`actors.replica_tier`)
        while requests may be running: `clear` would refuse."""
        removed = 0
        now = self.clock()
        for node in sorted(self.index, key=lambda n: n.depth, reverse=True):
            if node.evictable:
                self._remove_block(node, now)
                removed += 1
        return removed

    def _remove_block(self, node: BlockNode, now: float) -> None:
        """Remove an unreferenced leaf without capturing it anywhere (an admin drop, not an eviction)."""
        self.index.remove(node, now)
        assert node.slot is not None
        self.pool.free(node.slot)

    def clear(self) -> None:
        """Drop every block. Blocks held by running requests make this an error."""
        if any(node.ref_cnt for node in self.index):
            raise RuntimeError("cannot clear the cache while requests hold blocks")
        self.index.clear()
        self.pool.reset()

    def get_stats(self) -> dict[str, float | int | str]:
        return {
            "blocks": len(self.index),
            "capacity_blocks": self.pool.num_blocks,
            "free_blocks": self.pool.num_free,
            "bytes_used": self.pool.bytes_used,
            "bytes_capacity": self.pool.bytes_total,
            "block_size": self.block_size,
            "codec": self.codec.name,
            "policy": self.index.policy.name,
            "stored_blocks": self.counters.stored,
            "evicted_blocks": self.counters.evicted,
            "not_admitted_blocks": self.counters.not_admitted,
            "no_room_blocks": self.counters.no_room,
        }

    def held_blocks(self) -> Iterable[BlockNode]:
        return (node for node in self.index if node.ref_cnt)
