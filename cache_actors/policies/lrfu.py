"""Cost-aware LRFU with admission: the expert that `AdaptivePolicy` tunes.

Every block key requested recently has a *combined recency-frequency* score
(CRF; Lee et al., "LRFU", IEEE Trans. Computers 2001): each request adds 1 and
the sum halves every ``H`` block-events (the clock advances by the number of
blocks each request asks for). A short half-life ranks like LRU, a long one
like LFU with aging. Kept in the log domain, ``log2(CRF) + t / H``, the order of
two keys never changes while neither is requested, so a heap keeps it with
O(log n) per event.

The eviction priority of a block is ``log2(CRF) + log2(tokens)``: a block is
worth the prefill tokens it saves, so a partial last block (which only an
identical prompt can reuse) goes before a full block of the same CRF.

Admission (bypass): when the cache is full, a missed block is admitted only if
its priority is at least that of the block it would evict (TinyLFU's rule,
Einziger et al., ACM ToS 2017, with the CRF instead of a sketch). One-off
prompts then do not flush blocks that are being reused; because a refused
block's children cannot be cached either, a long one-off tail is bypassed as a
whole, as the offline optimum does.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Hashable, Sequence

from cache_actors.core.block_index import BlockNode
from cache_actors.policies.base import PriorityPolicy

#: Scores more than this many half-lives old are worth nothing (2**-40).
_FORGET_HALF_LIVES = 40.0


class CrfTable:
    """Log-domain CRF of the recently requested keys.

    ``score(k) = log2(sum over requests i of k: 2 ** (-(t - t_i) / H)) + t / H``
    orders keys like their CRF at any common time ``t``. At most ``max_keys``
    keys are kept: past that, the lower-scored half is forgotten (amortized
    O(log n) per observed key).
    """

    __slots__ = ("half_life", "max_keys", "_t", "_score")

    def __init__(self, half_life: float, max_keys: int) -> None:
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        self.half_life = float(half_life)
        self.max_keys = max(16, max_keys)
        self._t = 0
        self._score: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._score)

    def observe(self, keys: Sequence[Hashable]) -> None:
        """One request for each key, all at the same instant; then the clock moves by len(keys)."""
        score = self._score
        x = self._t / self.half_life
        log2 = math.log2
        for key in keys:
            old = score.get(key)
            if old is None or old < x - _FORGET_HALF_LIVES:
                score[key] = x
            else:
                score[key] = x + log2(1.0 + 2.0 ** (old - x))
        self._t += len(keys)
        if len(score) > self.max_keys:
            keep = heapq.nlargest(self.max_keys // 2, score.items(), key=lambda kv: kv[1])
            self._score = dict(keep)

    def score(self, key: Hashable) -> float:
        """Log-domain CRF; -inf for a key never seen (or forgotten)."""
        return self._score.get(key, -math.inf)


def block_priority(table: CrfTable, node: BlockNode) -> float:
    """``log2(CRF) + log2(tokens)``: smaller is evicted first."""
    tokens = node.num_tokens
    return table.score(node.key) + (math.log2(tokens) if tokens > 0 else 0.0)


class LrfuPolicy(PriorityPolicy):
    """Cost-aware LRFU with admission at one fixed half-life.

    ``table`` may be shared (``observe=False``): `AdaptivePolicy` feeds one
    table per half-life once per request, for its shadow caches and itself.
    Standalone (``observe=True``), the table is fed by `on_request`, so the
    owner must call `BlockIndex.begin_request`.
    """

    name = "lrfu"

    def __init__(self, table: CrfTable, *, observe: bool = True) -> None:
        super().__init__()
        self.table = table
        self._observe = observe
        self._size = 0
        self._full_tokens = 0  # largest block seen: the assumed size of a new block

    def priority(self, node: BlockNode, now: float) -> Any:
        return block_priority(self.table, node)

    def on_request(self, keys: Sequence[Hashable], now: float, tokens: Sequence[int] | None = None) -> None:
        if self._observe:
            self.table.observe(keys)

    def on_insert(self, node: BlockNode, now: float) -> None:
        self._size += 1
        if node.num_tokens > self._full_tokens:
            self._full_tokens = node.num_tokens

    def on_remove(self, node: BlockNode, now: float) -> None:
        self._size -= 1

    def admit(self, key: Hashable, parent: BlockNode | None, now: float) -> bool:
        if self.capacity is None or self._size < self.capacity:
            return True
        top = self._peek()
        if top is None:
            return True  # nothing evictable: the caller finds no room anyway
        cost = math.log2(self._full_tokens) if self._full_tokens > 0 else 0.0
        return self.table.score(key) + cost >= top[0]

    def reset(self) -> None:
        super().reset()
        self._size = 0
        if self._observe:  # the table is ours: forget it too
            self.table = CrfTable(self.table.half_life, self.table.max_keys)
