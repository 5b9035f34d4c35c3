"""The coordinator's global block index, as plain Python (no Ray).

Shards own the truth; this index is rebuilt from what they report and can
always be thrown away. Each block hash maps to a bit mask of where it lives
(bit 0 Redis, bit 1 disk, bit 2+i shard i), so a lookup is one dict access
whatever the number of blocks or shards. Per shard it keeps the epoch (a new
one each time the shard process starts) and the next expected event sequence
number: a gap, an unknown shard or a new epoch asks for a resync from the
shard's `dump`; batches that arrive during a resync are buffered and replayed
from the dump's sequence number on.

It also answers the questions the coordinator exists for: where the missing
blocks of a prefix are cheapest to fetch (`locate`), which blocks have been
seen following a block (`successors`, for prefetch), which shard holds the
longest prefix (`route`, for the router), and which blocks are hot enough to
demote instead of dropping.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import zstandard

from cache_actors.cluster.prefix_route import held_prefixes, location_pieces
from cache_actors.cluster.shard_store import DEMOTED, EVICTED, STORED, TIER_MISS, TOUCHED, Event

REDIS, DISK = "redis", "disk"
TIER_TAGS = {"shm": "device", REDIS: REDIS, DISK: DISK}
_TIER_BITS = {REDIS: 0, DISK: 1}  # bit positions
_FIRST_SHARD_BIT = 2
#: Batches buffered per shard while its resync is in flight; beyond this it resyncs again.
MAX_BUFFERED_BATCHES = 64


@dataclass(frozen=True, slots=True)
class SourceCosts:
    """What fetching blocks costs, per source kind (for `GlobalIndex.locate`).

    Defaults: a same-node peer copies through shared memory, another node
    goes through Ray's object transfer, Redis is one round trip plus the
    (compressed) bytes through a single connection.
    """

    same_node_latency_s: float = 0.001
    same_node_bytes_per_s: float = 4e9
    other_node_latency_s: float = 0.003
    other_node_bytes_per_s: float = 1e9
    redis_latency_s: float = 0.001
    redis_bytes_per_s: float = 5e8
    disk_latency_s: float = 0.002
    disk_bytes_per_s: float = 1e9

    def cost_s(self, kind: str, num_blocks: int, block_bytes: int) -> float:
        latency, rate = {
            "same_node": (self.same_node_latency_s, self.same_node_bytes_per_s),
            "other_node": (self.other_node_latency_s, self.other_node_bytes_per_s),
            REDIS: (self.redis_latency_s, self.redis_bytes_per_s),
            DISK: (self.disk_latency_s, self.disk_bytes_per_s),
        }[kind]
        return latency + num_blocks * block_bytes / rate


@dataclass(slots=True)
class ShardInfo:
    bit: int
    node_id: str
    epoch: str
    next_seq: int = 0
    resyncing: bool = True
    buffer: list[tuple[int, list[Event]]] = field(default_factory=list)
    pending_hot: list[bytes] = field(default_factory=list)
    blocks: set[bytes] = field(default_factory=set)
    last_report: float = 0.0


@dataclass(frozen=True, slots=True)
class ApplyResult:
    resync: bool
    hot: list[bytes]


@dataclass(frozen=True, slots=True)
class ReportReply:
    """The coordinator's answer to a shard's event batch."""

    hot: list[bytes]
    """Hashes the shard holds that became hot cluster-wide."""
    others_hold_blocks: bool
    """Whether any other shard holds a block: if none does (and there are no tiers), a miss has nowhere to be fetched from."""
    announced_ns: int
    """When the coordinator last announced a new holder (`time.time_ns`): a reply older than an announcement loses."""


class GlobalIndex:
    """Block hash -> locations, per-shard sequence tracking, hotness and successors."""

    def __init__(
        self,
        *,
        hot_min_hits: int = 2,
        costs: SourceCosts = SourceCosts(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hot_min_hits = hot_min_hits
        self.costs = costs
        self.clock = clock
        self._loc: dict[bytes, int] = {}
        self._hits: dict[bytes, int] = {}
        self._succ: dict[bytes, bytes] = {}
        self.shards: dict[str, ShardInfo] = {}
        self._by_bit: dict[int, str] = {}
        self._shard_bits = 0  # the bits of all registered shards
        self._usable: dict[str | None, int] = {}  # `_usable_bits` per requester, until a shard's state changes
        self.counters: dict[str, int] = defaultdict(int)

    # --- shards ---------------------------------------------------------------------------
    def _new_bit(self) -> int:
        bit = _FIRST_SHARD_BIT
        while bit in self._by_bit:
            bit += 1
        return bit

    def _register(self, name: str, node_id: str, epoch: str) -> ShardInfo:
        old = self.shards.get(name)
        if old is not None:
            self._drop_blocks(old)
            info = ShardInfo(bit=old.bit, node_id=node_id, epoch=epoch)
        else:
            info = ShardInfo(bit=self._new_bit(), node_id=node_id, epoch=epoch)
        self.shards[name] = info
        self._usable.clear()
        self._by_bit[info.bit] = name
        self._shard_bits |= 1 << info.bit
        return info

    def _drop_blocks(self, info: ShardInfo) -> None:
        clear = ~(1 << info.bit)
        for block_hash in info.blocks:
            self._set_mask(block_hash, self._loc.get(block_hash, 0) & clear)
        info.blocks = set()

    def _set_resyncing(self, info: ShardInfo, resyncing: bool) -> None:
        """Every change of a shard's ``resyncing`` goes here: it changes what `locate` may use."""
        info.resyncing = resyncing
        self._usable.clear()

    def purge(self, name: str) -> int:
        """Forget a dead shard and every location it held. Returns blocks it held."""
        info = self.shards.pop(name, None)
        if info is None:
            return 0
        held = len(info.blocks)
        self._usable.clear()
        self._drop_blocks(info)
        del self._by_bit[info.bit]
        self._shard_bits &= ~(1 << info.bit)
        self.counters["purged_shards"] += 1
        return held

    # --- events -----------------------------------------------------------------------------
    def apply(self, name: str, node_id: str, epoch: str, first_seq: int, events: Sequence[Event]) -> ApplyResult:
        """Apply a shard's batch; ``resync`` asks the caller to fetch the shard's dump."""
        info = self.shards.get(name)
        if info is None or info.epoch != epoch:
            info = self._register(name, node_id, epoch)
            info.buffer.append((first_seq, list(events)))
            self.counters["resyncs"] += 1
            return ApplyResult(True, [])
        info.last_report = self.clock()
        if info.resyncing:
            if len(info.buffer) >= MAX_BUFFERED_BATCHES:
                info.buffer.clear()
                return ApplyResult(True, [])
            info.buffer.append((first_seq, list(events)))
            return ApplyResult(False, [])
        if first_seq > info.next_seq:
            self.counters["gaps"] += 1
            self.counters["resyncs"] += 1
            self._set_resyncing(info, True)
            info.buffer = [(first_seq, list(events))]
            return ApplyResult(True, [])
        self._apply_events(info, events[info.next_seq - first_seq :])
        info.next_seq = max(info.next_seq, first_seq + len(events))
        hot, info.pending_hot = info.pending_hot, []
        return ApplyResult(False, hot)

    def load_dump(
        self, name: str, epoch: str, seq: int, entries: Sequence[tuple[bytes, bytes | None, int]],
        tiers: Sequence[tuple[bytes, str]] = (),
    ) -> bool:
        """Replace a shard's blocks by its dump, then replay buffered batches from ``seq``.

        Returns False (another resync needed) if the shard changed epoch
        meanwhile or the buffered batches leave a gap.
        """
        info = self.shards.get(name)
        if info is None or info.epoch != epoch:
            return False
        self._drop_blocks(info)
        bit = 1 << info.bit
        for block_hash, parent, hits in entries:
            self._set_mask(block_hash, self._loc.get(block_hash, 0) | bit)
            info.blocks.add(block_hash)
            if hits:
                self._hits[block_hash] = max(self._hits.get(block_hash, 0), hits)
            if parent is not None:
                self._succ[parent] = block_hash
        for block_hash, tier in tiers:
            self._loc[block_hash] = self._loc.get(block_hash, 0) | (1 << _TIER_BITS[tier])
        info.next_seq = seq
        self._set_resyncing(info, False)
        buffered, info.buffer = sorted(info.buffer, key=lambda batch: batch[0]), []
        for first_seq, events in buffered:
            if first_seq + len(events) <= info.next_seq:
                continue
            if first_seq > info.next_seq:
                self._set_resyncing(info, True)
                self.counters["gaps"] += 1
                return False
            self._apply_events(info, events[info.next_seq - first_seq :])
            info.next_seq = first_seq + len(events)
        return True

    def _set_mask(self, block_hash: bytes, mask: int) -> None:
        if mask:
            self._loc[block_hash] = mask
        else:
            self._loc.pop(block_hash, None)
            self._hits.pop(block_hash, None)
            self._succ.pop(block_hash, None)

    def _apply_events(self, info: ShardInfo, events: Sequence[Event]) -> None:
        bit = 1 << info.bit
        loc = self._loc
        for event in events:
            kind, block_hash = event[0], event[1]
            if kind == TOUCHED:
                hits = self._hits.get(block_hash, 0) + 1
                self._hits[block_hash] = hits
                if hits == self.hot_min_hits:
                    self._mark_hot(block_hash)
            elif kind == STORED:
                loc[block_hash] = loc.get(block_hash, 0) | bit
                info.blocks.add(block_hash)
                if event[2] is not None:
                    self._succ[event[2]] = block_hash
            elif kind == EVICTED:
                info.blocks.discard(block_hash)
                self._set_mask(block_hash, loc.get(block_hash, 0) & ~bit)
            elif kind == DEMOTED:
                loc[block_hash] = loc.get(block_hash, 0) | (1 << _TIER_BITS[event[2]])
            elif kind == TIER_MISS:
                self._set_mask(block_hash, loc.get(block_hash, 0) & ~(1 << _TIER_BITS[event[2]]))
        self.counters["events"] += len(events)

    def _mark_hot(self, block_hash: bytes) -> None:
        mask = self._loc.get(block_hash, 0) >> _FIRST_SHARD_BIT
        bit = _FIRST_SHARD_BIT
        while mask:
            if mask & 1:
                name = self._by_bit.get(bit)
                if name is not None:
                    self.shards[name].pending_hot.append(block_hash)
            mask >>= 1
            bit += 1

    # --- questions ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._loc)

    def holders(self) -> frozenset[str]:
        """Shards known to hold at least one block."""
        return frozenset(name for name, info in self.shards.items() if info.blocks)

    def where(self, block_hash: bytes) -> list[str]:
        """Shard names and tiers holding a block."""
        mask = self._loc.get(block_hash, 0)
        places = [tier for tier, bit in _TIER_BITS.items() if mask >> bit & 1]
        return places + [name for bit, name in self._by_bit.items() if mask >> bit & 1]

    def holds(self, name: str, block_hash: bytes) -> bool:
        """Whether shard ``name`` holds the block (as far as the index knows)."""
        info = self.shards.get(name)
        return info is not None and bool(self._loc.get(block_hash, 0) >> info.bit & 1)

    def hits(self, block_hash: bytes) -> int:
        return self._hits.get(block_hash, 0)

    def _usable_bits(self, requester: str | None) -> int:
        """Location bits `locate` may fetch from: the tiers and every synced shard but the requester."""
        bits = self._usable.get(requester)
        if bits is None:
            bits = (1 << _TIER_BITS[REDIS]) | (1 << _TIER_BITS[DISK])
            for name, info in self.shards.items():
                if not info.resyncing and name != requester:
                    bits |= 1 << info.bit
            self._usable[requester] = bits
        return bits

    def _kind(self, bit: int, node_id: str | None) -> tuple[str, str]:
        """(source name, cost kind) of a location bit."""
        for tier, tier_bit in _TIER_BITS.items():
            if bit == tier_bit:
                return tier, tier
        name = self._by_bit[bit]
        return name, "same_node" if self.shards[name].node_id == node_id else "other_node"

    def locate(self, hashes: Sequence[bytes], *, requester: str | None, node_id: str | None, block_bytes: int) -> list[tuple[str, list[bytes]]]:
        """Cheapest sources for the blocks of ``hashes`` held elsewhere, as consecutive runs.

        Stops at the first block no other place holds. Each run goes to the
        source whose estimated cost per block over its longest run is lowest
        (ties: tiers first, then the lowest shard bit). The holdings come
        from `location_pieces` (bisection, not a probe per block), so the
        runs are advice: exact when each place holds one contiguous run.
        """
        pieces = location_pieces(hashes, self._loc, self._usable_bits(requester))
        sources: dict[int, tuple[str, str]] = {}
        runs: list[tuple[str, list[bytes]]] = []
        index, count = 0, len(pieces)
        while index < count:
            start, _, mask = pieces[index]
            best: tuple[float, int, int] | None = None
            candidates, bit = mask, 0
            while candidates:
                if candidates & 1:
                    flag, last = 1 << bit, index
                    while last + 1 < count and pieces[last + 1][2] & flag:
                        last += 1
                    length = pieces[last][1] - start
                    source = sources.get(bit) or sources.setdefault(bit, self._kind(bit, node_id))
                    per_block = self.costs.cost_s(source[1], length, block_bytes) / length
                    if best is None or per_block < best[0]:
                        best = (per_block, bit, last)
                candidates >>= 1
                bit += 1
            assert best is not None
            _, bit, last = best
            runs.append((sources[bit][0], list(hashes[start : pieces[last][1]])))
            index = last + 1
        return runs

    def successors(self, block_hash: bytes, limit: int) -> list[bytes]:
        """The chain of blocks most recently seen following ``block_hash`` (up to ``limit``)."""
        out: list[bytes] = []
        current = block_hash
        while len(out) < limit:
            nxt = self._succ.get(current)
            if nxt is None or nxt not in self._loc or nxt in out:
                break
            out.append(nxt)
            current = nxt
        return out

    def route(self, hashes: Sequence[bytes]) -> list[tuple[str, int]]:
        """``[(shard, prefix blocks it holds)]``, longest first (advice for a router).

        Bisection over the chain, probing the matching shards' block sets
        (see `cache_actors.cluster.prefix_route` for why that stays flat as the index grows).
        """
        matched = held_prefixes(hashes, self._loc, self._blocks_of_bit, self._shard_bits)
        ranked = [(self._by_bit[bit], blocks) for bit, blocks in matched.items() if bit in self._by_bit]
        return sorted(ranked, key=lambda item: -item[1])

    def _blocks_of_bit(self, bit: int) -> set[bytes]:
        return self.shards[self._by_bit[bit]].blocks

    # --- snapshot (warm restart) ---------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Tier locations and hit counts (shard locations come back from the shards' dumps)."""
        keys = [h for h, mask in self._loc.items() if mask & 0b11 or self._hits.get(h)]
        hashes = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1) if keys else np.zeros((0, 32), np.uint8)
        tiers = np.fromiter((self._loc[h] & 0b11 for h in keys), dtype=np.uint8, count=len(keys))
        hits = np.fromiter((self._hits.get(h, 0) for h in keys), dtype=np.uint32, count=len(keys))
        header = np.array([len(keys), hashes.shape[1] if keys else 32], dtype=np.uint64).tobytes()
        return zstandard.ZstdCompressor(level=3).compress(header + hashes.tobytes() + tiers.tobytes() + hits.tobytes())

    def restore(self, blob: bytes) -> int:
        """Merge a `snapshot`; returns blocks restored. Raises ValueError if it is malformed."""
        try:
            raw = zstandard.ZstdDecompressor().decompress(blob)
            count, width = (int(v) for v in np.frombuffer(raw[:16], dtype=np.uint64))
            body = raw[16:]
            if len(body) != count * (width + 5):
                raise ValueError("size mismatch")
        except (zstandard.ZstdError, ValueError) as exc:
            raise ValueError(f"unreadable coordinator snapshot: {exc}") from None
        hashes = body[: count * width]
        tiers = np.frombuffer(body[count * width : count * (width + 1)], dtype=np.uint8)
        hits = np.frombuffer(body[count * (width + 1) :], dtype=np.uint32)
        for row in range(count):
            key = hashes[row * width : (row + 1) * width]
            if tiers[row]:
                self._loc[key] = self._loc.get(key, 0) | int(tiers[row])
            if hits[row] and key in self._loc:
                self._hits[key] = max(self._hits.get(key, 0), int(hits[row]))
        return count

    def stats(self) -> dict[str, Any]:
        tiers = {tier: sum(1 for m in self._loc.values() if m >> bit & 1) for tier, bit in _TIER_BITS.items()}
        return {
            "blocks": len(self._loc),
            "shards": {name: {"blocks": len(info.blocks), "node_id": info.node_id, "resyncing": info.resyncing,
                              "next_seq": info.next_seq} for name, info in self.shards.items()},
            "tier_blocks": tiers,
            **self.counters,
        }
