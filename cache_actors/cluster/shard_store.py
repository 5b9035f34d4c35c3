"""`ShardStore`: the block cache a shard actor owns, with leases and events (no Ray).

It is a `BaseKVCache` (same prefix index, policy, pool and `_evict` hook)
whose pool is shared with same-node clients. Clients never touch the index:

- **read lease** (`lookup`): the longest ready prefix is locked and its slots
  and checksums handed out; the client copies the blocks straight from the
  shared pool, verifies them, then calls `release_lease`.
- **write lease** (`reserve` / `commit`): new blocks are inserted *pending*
  (locked, invisible to lookups), the client writes their bytes into the
  slots, and `commit` publishes them with the writer's checksums.

A lease that is not released or committed within ``lease_ttl_s`` is dropped
by `expire_leases` (a dead client cannot pin the pool). A slow client whose
lease expired may then write into reused slots; the checksums of the new
owner's blocks catch it, so no reader ever decodes mixed bytes.

Every change a coordinator must know is appended to an event log with a
per-store sequence number (`take_events`); `dump` gives the whole index for a
resync.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cache_actors.core.block_checksum import block_checksums
from cache_actors.core.block_index import BlockNode
from cache_actors.codecs import Codec
from cache_actors.core.hashing import BlockHash
from cache_actors.core.kv_cache import BaseKVCache
from cache_actors.cluster.part_arrays import parts_to_numpy
from cache_actors.core.pool import BlockPool

if TYPE_CHECKING:  # annotations only
    from cache_actors.policies.base import EvictionPolicy

#: Event kinds sent to the coordinator.
STORED, TOUCHED, EVICTED, DEMOTED, TIER_MISS = "s", "t", "e", "d", "x"

Event = tuple[Any, ...]  # (kind, hash[, parent or tier])
#: Demotions a shard remembers for its dump (older ones are left to the coordinator's snapshot).
MAX_DEMOTED_RECORDS = 65536
Entry = tuple[BlockHash, "BlockHash | None", bytes]  # (hash, parent, checksum) of a block in transit


@dataclass(slots=True)
class Lease:
    nodes: list[BlockNode]
    deadline: float
    write: bool


@dataclass(slots=True)
class Demotion:
    """An evicted block worth keeping in a lower tier (bytes copied before the slot is reused)."""

    block_hash: BlockHash
    parent: BlockHash | None
    checksum: bytes
    parts: dict[str, np.ndarray]
    captured_at: float = 0.0


@dataclass(slots=True)
class LookupResult:
    lease_id: int
    slots: list[int] = field(default_factory=list)
    checksums: list[bytes] = field(default_factory=list)


def _ready(node: BlockNode) -> bool:
    return node.extra.get("ready", True)


class ShardStore(BaseKVCache):
    """Block cache with client leases, an event log and demotion capture."""

    def __init__(
        self,
        *,
        codec: Codec,
        block_size: int,
        num_blocks: int,
        policy: EvictionPolicy,
        pool: BlockPool | None = None,
        clock: Callable[[], float] = time.monotonic,
        lease_ttl_s: float = 30.0,
        demote_min_hits: int = 2,
        capture_demotions: bool = False,
        max_pending_demotions: int = 256,
        first_lease_id: int = 1,
    ) -> None:
        super().__init__(codec=codec, block_size=block_size, num_blocks=num_blocks, policy=policy, clock=clock, pool=pool)
        self.lease_ttl_s = lease_ttl_s
        self.demote_min_hits = demote_min_hits
        self.capture_demotions = capture_demotions
        self.max_pending_demotions = max_pending_demotions
        self._leases: dict[int, Lease] = {}
        # A shard passes a random start so lease ids of a previous incarnation never
        # name a lease of this one (clients may release or commit stale ids).
        self._lease_ids = itertools.count(max(first_lease_id, 1))
        self._events: list[Event] = []
        self.seq = 0  # sequence number of the next event
        self.demotions: list[Demotion] = []
        self.dropped_demotions = 0
        # Where this shard demoted blocks to (recent ones, bounded): part of a dump, so a
        # coordinator rebuilt from the shards knows the tiers' contents too.
        self.demoted: OrderedDict[BlockHash, str] = OrderedDict()
        self.requests = self.request_blocks = 0  # client requests the policy was shown, and their blocks
        self.reuse_reports = 0  # of those, requests a tier in front served alone (`note_reuse`)

    # --- events ---------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._events.append(event)
        self.seq += 1

    def take_events(self) -> tuple[int, list[Event]]:
        """``(seq of the first event, events)`` since the last call; empties the log."""
        events, self._events = self._events, []
        return self.seq - len(events), events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def note_tier_miss(self, block_hash: BlockHash, tier: str) -> None:
        """A tier no longer had a block (TTL, restart): the coordinator drops that location."""
        self._emit((TIER_MISS, block_hash, tier))

    def return_events(self, events: list[Event], max_pending: int = 100_000) -> bool:
        """Put back a batch that could not be delivered (it goes out again with the next one).

        Beyond ``max_pending`` events they are dropped instead: the coordinator
        then sees a gap and resyncs from `dump`. Returns whether they were kept.
        """
        if len(events) + len(self._events) > max_pending:
            return False
        self._events[:0] = events
        return True

    # --- read leases ----------------------------------------------------------------------
    def _ready_prefix(self, hashes: Sequence[BlockHash], limit: int | None, request: bool) -> list[BlockNode]:
        """Ready nodes of the longest cached prefix, at most ``limit``. A ``request`` (all full blocks
        of a client's prompt) first shows the policy every block, as `BaseKVCache.match` does:
        learning policies need the whole request, whatever ``limit`` lets the client reuse."""
        if request:
            self.requests += 1
            self.request_blocks += len(hashes)
            found = self.index.begin_request(hashes, self.clock())
        else:
            found = self.index.match_prefix(hashes if limit is None else hashes[:limit])
        return list(itertools.takewhile(_ready, found if limit is None else found[:limit]))

    def lookup(self, hashes: Sequence[BlockHash], *, limit: int | None = None, request: bool = False) -> LookupResult:
        """Lock the longest ready cached prefix of ``hashes`` (at most ``limit`` blocks) for a client to read."""
        nodes = self._ready_prefix(hashes, limit, request)
        if not nodes:
            return LookupResult(lease_id=0)
        now = self.clock()
        self.index.lock(nodes)
        self._touch(nodes, now)
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = Lease(nodes, now + self.lease_ttl_s, write=False)
        return LookupResult(lease_id, [node.slot for node in nodes], [node.extra["sum"] for node in nodes])

    def note_reuse(self, reports: Sequence[tuple[Sequence[BlockHash], int]]) -> int:
        """Requests a tier in front of this store served from its own copies (`actors.reuse_reports`):
        show the policy each whole request and touch the first ``reused`` blocks this store holds, as
        `lookup` would have, without a lease. Returns the blocks touched."""
        touched = 0
        now = self.clock()
        for hashes, reused in reports:
            nodes = self._ready_prefix(hashes, max(0, int(reused)), request=True)
            self._touch(nodes, now)
            touched += len(nodes)
        self.reuse_reports += len(reports)
        return touched

    def _touch(self, nodes: Sequence[BlockNode], now: float) -> None:
        """A request reused ``nodes``: the policy records the hits and the coordinator hears of them."""
        self.index.touch(nodes, now)
        for node in nodes:
            self._emit((TOUCHED, node.key))

    def release_lease(self, lease_id: int) -> bool:
        """End a read lease (or abort a write lease). False if it already expired."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        if lease.write:
            self._abort(lease)
        else:
            self.index.unlock(lease.nodes, self.clock())
        return True

    def truncate_lease(self, lease_id: int, keep: int) -> bool:
        """Keep only the first ``keep`` blocks of a read lease (the reader refused the rest)."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.write:
            return False
        self.index.unlock(lease.nodes[keep:], self.clock())
        del lease.nodes[keep:]
        if not lease.nodes:
            del self._leases[lease_id]
        return True

    # --- write leases ---------------------------------------------------------------------
    def reserve(
        self, hashes: Sequence[BlockHash], start: int, tenant: str | None = None,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Insert pending blocks ``start..`` of a chain (its first block tagged ``tenant``);
        returns ``(lease, [(position, slot)])``.

        Blocks already cached are skipped; the chain stops at the first block
        that is pending in another lease, not admitted, or finds no room.
        Lease 0 means nothing to write.
        """
        now = self.clock()
        held, new = self._claim_chain(hashes, start, now, num_tokens=self.block_size, usable=_ready, tenant=tenant)
        for _, node in new:
            node.extra["ready"] = False  # pending until the writer commits its bytes
        # New blocks stay locked by the lease; existing ones were only held while we allocated.
        new_ids = {id(n) for _, n in new}
        self.index.unlock([n for n in held if id(n) not in new_ids], now)
        if not new:
            return 0, []
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = Lease([n for _, n in new], now + self.lease_ttl_s, write=True)
        return lease_id, [(position, node.slot) for position, node in new]

    def commit(self, lease_id: int, checksums: Sequence[bytes]) -> int:
        """Publish a write lease's blocks with the writer's checksums. Returns blocks published."""
        lease = self._leases.get(lease_id)
        if lease is None or not lease.write:
            return 0
        if len(checksums) != len(lease.nodes):
            raise ValueError(f"commit of {len(lease.nodes)} blocks got {len(checksums)} checksums")
        del self._leases[lease_id]
        now = self.clock()
        for node, checksum in zip(lease.nodes, checksums):
            node.extra["ready"] = True
            node.extra["sum"] = bytes(checksum)
            self._emit((STORED, node.key, node.parent.key if node.parent is not None else None))
        self.index.unlock(lease.nodes, now)
        self.counters.stored += len(lease.nodes)
        return len(lease.nodes)

    def _abort(self, lease: Lease) -> None:
        now = self.clock()
        for node in reversed(lease.nodes):  # children first
            node.ref_cnt -= 1
            if node.num_children:  # cannot happen: pending blocks get no children from other writers
                continue
            self.index.remove(node, now)
            self.pool.free(node.slot)

    def expire_leases(self) -> int:
        """Drop leases past their deadline; returns how many."""
        now = self.clock()
        expired = [lease_id for lease_id, lease in self._leases.items() if lease.deadline <= now]
        for lease_id in expired:
            self.release_lease(lease_id)
        return len(expired)

    @property
    def num_leases(self) -> int:
        return len(self._leases)

    # --- blocks from elsewhere (tiers, peers) ----------------------------------------------------
    def insert_verified(
        self,
        entries: Sequence[Entry],
        parts: dict[str, torch.Tensor],
        tenant: str | None = None,
    ) -> tuple[int, int]:
        """Add blocks ``(hash, parent, checksum)`` (a chain, parents first) whose rows are ``parts``;
        ``tenant`` tags the chain's first block if it has no parent.

        Rows whose bytes do not match their checksum are refused, and the
        chain stops there. Returns ``(blocks inserted, checksum mismatches)``.
        """
        if not entries:
            return 0, 0
        tensors = parts
        good = 0
        mismatches = 0
        for row, actual in enumerate(block_checksums(tensors, range(len(entries)))):
            if actual != entries[row][2]:
                mismatches = 1
                break
            good += 1
        entries = entries[:good]
        if not entries:
            return 0, mismatches
        first_parent = entries[0][1]
        start = 0
        chain: list[BlockHash] = [block_hash for block_hash, _, _ in entries]
        if first_parent is not None:
            chain.insert(0, first_parent)
            start = 1
        lease_id, slots = self.reserve(chain, start, tenant)
        if not lease_id:
            return 0, mismatches
        rows = [position - start for position, _ in slots]
        index = torch.tensor(rows, dtype=torch.long)
        self.pool.write([slot for _, slot in slots], {name: t.index_select(0, index) for name, t in tensors.items()})
        return self.commit(lease_id, [entries[row][2] for row in rows]), mismatches

    def blocks_in_order(self) -> list[BlockNode]:
        """Published blocks only, parents first (a block still being written has no bytes yet, nor its children)."""
        kept: set[int] = set()
        out = []
        for node in super().blocks_in_order():
            if _ready(node) and (node.parent is None or id(node.parent) in kept):
                kept.add(id(node))
                out.append(node)
        return out

    def insert_encoded(
        self, entries: Sequence[tuple[BlockHash, BlockHash | None, int]], parts: dict[str, torch.Tensor],
        tenants: Mapping[BlockHash, str] | None = None,
    ) -> int:
        """A persisted set's blocks (a forest, parents first; `cache_actors.core.persistence`): the base
        insert, then each new block gets the shard's checksum and a STORED event, as a committed write does,
        so readers can verify it and the coordinator indexes it."""
        new = {block_hash: row for row, (block_hash, _, _) in enumerate(entries) if block_hash not in self.index}
        inserted = super().insert_encoded(entries, parts, tenants)
        rows = list(new.values())
        for block_hash, checksum in zip(new, block_checksums(parts, rows)):
            node = self.index.get(block_hash)
            if node is None:  # evicted again to make room for a later one of the same set
                continue
            node.extra["ready"] = True
            node.extra["sum"] = bytes(checksum)
            self._emit((STORED, node.key, node.parent.key if node.parent is not None else None))
        return inserted

    def read_blocks(
        self, hashes: Sequence[BlockHash], *, limit: int | None = None, request: bool = False,
    ) -> tuple[list[Entry], dict[str, np.ndarray]]:
        """Copies of the longest ready prefix of ``hashes`` (at most ``limit``), for a peer, a
        tier, or (``request``) a client on another node, whose hit counts like a `lookup`."""
        nodes = self._ready_prefix(hashes, limit, request)
        entries = [(n.key, n.parent.key if n.parent is not None else None, n.extra["sum"]) for n in nodes]
        if not nodes:
            return [], {}
        if request:
            self._touch(nodes, self.clock())
        return entries, parts_to_numpy(self.pool.read([n.slot for n in nodes]))

    # --- eviction and demotion -----------------------------------------------------------------
    def mark_hot(self, hashes: Sequence[BlockHash]) -> int:
        """The coordinator says these blocks are hot cluster-wide: demote them instead of dropping."""
        marked = 0
        for block_hash in hashes:
            node = self.index.get(block_hash)
            if node is not None:
                node.extra["hot"] = True
                marked += 1
        return marked

    def _is_hot(self, node: BlockNode) -> bool:
        return bool(node.extra.get("hot")) or node.hits >= self.demote_min_hits

    def _free_slot(self, node: BlockNode) -> None:
        if self.capture_demotions and _ready(node) and self._is_hot(node):
            if len(self.demotions) < self.max_pending_demotions:
                parts = self.pool.read([node.slot])
                self.demotions.append(Demotion(node.key, node.parent.key if node.parent is not None else None,
                                               node.extra["sum"], parts_to_numpy(parts), self.clock()))
            else:
                self.dropped_demotions += 1
        self._emit((EVICTED, node.key))
        super()._free_slot(node)

    def take_demotions(self) -> list[Demotion]:
        demotions, self.demotions = self.demotions, []
        return demotions

    def retry_demotions(self, demotions: list[Demotion], max_age_s: float) -> None:
        """Put back demotions no tier took (a tier backing off), dropping those older than ``max_age_s``."""
        now = self.clock()
        for demotion in demotions:
            if now - demotion.captured_at <= max_age_s and len(self.demotions) < self.max_pending_demotions:
                self.demotions.append(demotion)
            else:
                self.dropped_demotions += 1

    def note_demoted(self, block_hash: BlockHash, tier: str) -> None:
        self._emit((DEMOTED, block_hash, tier))
        self.demoted[block_hash] = tier
        self.demoted.move_to_end(block_hash)
        while len(self.demoted) > MAX_DEMOTED_RECORDS:
            self.demoted.popitem(last=False)

    # --- index dump and admin ------------------------------------------------------------------
    def dump(self) -> tuple[int, list[tuple[BlockHash, BlockHash | None, int]], list[tuple[BlockHash, str]]]:
        """``(seq, [(hash, parent, hits)], [(hash, tier)])``: every ready block, parents first,
        and the blocks this shard recently demoted to a tier.

        ``seq`` is the sequence number of the next event: a coordinator that
        loads this dump applies only events from ``seq`` on.
        """
        nodes = [n for n in self.blocks_in_order() if _ready(n)]
        blocks = [(n.key, n.parent.key if n.parent is not None else None, n.hits) for n in nodes]
        return self.seq, blocks, list(self.demoted.items())

    def drop(self, hashes: Sequence[BlockHash]) -> int:
        """Remove blocks a reader found corrupt (and their descendants), if no one holds them."""
        removed = 0
        now = self.clock()
        for block_hash in hashes:
            node = self.index.get(block_hash)
            if node is None or not _ready(node):
                continue
            subtree = [n for n in self.index if _descends(n, node)]
            if any(n.ref_cnt for n in subtree):
                continue
            for victim in sorted(subtree, key=lambda n: -n.depth):
                self._remove_block(victim, now)
                removed += 1
        return removed

    def _remove_block(self, node: BlockNode, now: float) -> None:
        self._emit((EVICTED, node.key))  # the coordinator forgets it
        super()._remove_block(node, now)

    def clear(self) -> None:
        if self._leases:
            raise RuntimeError("cannot clear the shard while clients hold leases")
        for node in self.index:
            self._emit((EVICTED, node.key))
        super().clear()

    def get_stats(self) -> dict[str, float | int | str]:
        return {**super().get_stats(), "leases": len(self._leases), "seq": self.seq,
                "pending_demotions": len(self.demotions), "dropped_demotions": self.dropped_demotions,
                "requests": self.requests, "request_blocks": self.request_blocks,
                "reuse_reports": self.reuse_reports}


def _descends(node: BlockNode, ancestor: BlockNode) -> bool:
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent  # type: ignore[assignment]
    return False


