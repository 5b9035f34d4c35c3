"""The ``adaptive`` eviction policy, the engine's default.

Which eviction policy is best depends on the traffic and on the cache size: a
small cache must hold on to hot shared prefixes and to a stable set of
sessions (frequency, and refusing one-off prompts), a large one must follow
what is active now (recency). No fixed policy wins everywhere, so this one
measures instead of guessing:

1. **Expert family.** `LrfuPolicy` (cost-aware LRFU with admission, see
   `lrfu_policy`) spans recency (short CRF half-life, LRU-like) to frequency
   (long half-life, LFU-like with aging and TinyLFU-style bypass). The
   half-lives form a geometric grid, ``HALF_LIVES``, in units of the capacity.

2. **Shadow caches.** For each half-life the policy runs a metadata-only
   shadow cache of the real capacity that replays every request through its
   own `BlockIndex` exactly as the real cache would (`replay_request`), so
   each expert's tokens saved are known *exactly*, as if it alone had run
   (full-information feedback, unlike ghost-list heuristics such as ARC or
   LeCaR). This is the "miniature simulation" way of tuning a cache policy
   online (Waldspurger et al., USENIX ATC 2017), here at full size because the
   metadata is tiny next to the KV blocks it stands for.

3. **Following the leader.** The real cache follows one shadow, the leader:
   it admits a missed block only if the leader holds it, and evicts first the
   blocks the leader does not hold, then by the leader's LRFU priority. So
   when the leader never changes, the real cache makes the leader's decisions,
   and after a change it converges to the new leader's contents at the pace of
   evictions. A shadow takes the lead when its advantage over the leader
   (tokens saved per request, summed with exponential decay over ``WINDOW``
   capacities of block-events) is positive and more than ``Z`` standard
   deviations of that paired difference, a guard against following noise
   when two experts are nearly tied. At most one change per capacity of
   block-events, so the O(n) re-ranking it costs is amortized O(1).

The grid, window and ``Z`` are fixed constants (chosen once across seeds of
every workload of ``blatam bench gen-trace``); nothing is fitted per trace,
and no workload is recognised by name: the choice is made online from the
requests the cache sees.

Requirements: call `BlockIndex.begin_request` once per request (it calls
`on_request`, which feeds the shadows) and `set_capacity` with the pool size.
Without requests it behaves as LRU that admits everything; without
``set_capacity`` the capacity is taken as the cache size at the first eviction.

Cost per request of ``n`` blocks: O(n log c) for each of the 4 shadows plus
the real cache's own O(n log c). Memory: 4 shadows of at most ``c`` metadata
nodes and 4 CRF tables of at most ``TABLE_FACTOR * c`` keys.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

from cache_actors.core.block_index import BlockIndex, BlockNode
from cache_actors.policies.lrfu import CrfTable, LrfuPolicy, block_priority
from cache_actors.policies.base import PriorityPolicy
from cache_actors.policies.replay import replay_request


class _ShadowPolicy(LrfuPolicy):
    """`LrfuPolicy` that tells its owner which keys enter and leave its shadow cache."""

    def __init__(self, table: CrfTable, owner: "AdaptivePolicy", slot: int) -> None:
        super().__init__(table, observe=False)
        self._owner = owner
        self._slot = slot

    def on_insert(self, node: BlockNode, now: float) -> None:
        super().on_insert(node, now)
        self._owner._shadow_changed(self._slot, node.key, now)

    def on_remove(self, node: BlockNode, now: float) -> None:
        super().on_remove(node, now)
        self._owner._shadow_changed(self._slot, node.key, now)


class _Shadow:
    """A metadata-only cache of the real capacity run by one expert."""

    __slots__ = ("index", "capacity")

    def __init__(self, policy: LrfuPolicy, capacity: int) -> None:
        policy.set_capacity(capacity)
        self.index = BlockIndex(policy)
        self.capacity = capacity

    def replay(self, keys: Sequence[Hashable], now: float, tokens: Sequence[int] | None) -> float:
        """Tokens (blocks, without ``tokens``) this shadow saves on the request."""
        hits = replay_request(self.index, keys, now, self.capacity, tokens).hits
        return float(hits if tokens is None else sum(tokens[:hits]))


class AdaptivePolicy(PriorityPolicy):
    """Follows whichever LRFU shadow cache currently saves the most (module docstring)."""

    name = "adaptive"

    #: CRF half-lives of the experts, in capacities of block-events.
    HALF_LIVES: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)
    #: Expert followed until another one proves better (the most recency-like).
    DEFAULT_LEADER = 0
    #: Advantages decay with a half-life of WINDOW capacities of block-events.
    WINDOW = 64.0
    #: A challenger must lead by Z standard deviations of the paired difference.
    Z = 1.0
    #: CRF tables keep at most this many keys per block of capacity.
    TABLE_FACTOR = 8

    def __init__(self) -> None:
        super().__init__()
        self._size = 0
        self._nodes: dict[Hashable, BlockNode] = {}  # the real cache's blocks, by key
        self._fed = False  # on_request was called: the shadows know the traffic
        self._tables: list[CrfTable] = []
        self._shadows: list[_Shadow] = []
        self._saved: list[float] = []  # decayed tokens saved, per shadow
        self._adv: list[float] = []  # decayed sum of (shadow - leader) per request
        self._var: list[float] = []  # decayed sum of its squares
        self._leader = self.DEFAULT_LEADER
        self._events = 0
        self._next_switch_at = 0

    # --- introspection -------------------------------------------------------------
    @property
    def half_life(self) -> float | None:
        """Half-life (in capacities) of the expert followed now; None before the capacity is known."""
        return self.HALF_LIVES[self._leader] if self._shadows else None

    def shadow_savings(self) -> dict[float, float]:
        """Decayed tokens saved by each expert's shadow, keyed by half-life."""
        return dict(zip(self.HALF_LIVES, self._saved))

    # --- set-up --------------------------------------------------------------------
    def set_capacity(self, num_blocks: int) -> None:
        super().set_capacity(num_blocks)
        self._build(num_blocks, 0.0)

    def _build(self, capacity: int, now: float) -> None:
        """(Re)start tables and shadows for ``capacity`` blocks; what they learned is dropped."""
        max_keys = self.TABLE_FACTOR * capacity + 1024
        self._tables = [CrfTable(h * capacity, max_keys) for h in self.HALF_LIVES]
        self._shadows = [
            _Shadow(_ShadowPolicy(table, self, slot), capacity) for slot, table in enumerate(self._tables)
        ]
        k = len(self._tables)
        self._saved, self._adv, self._var = [0.0] * k, [0.0] * k, [0.0] * k
        self._leader = self.DEFAULT_LEADER
        self._events = 0
        self._next_switch_at = capacity
        self._rebuild(now, rerank=True)

    # --- learning ------------------------------------------------------------------
    def on_request(self, keys: Sequence[Hashable], now: float, tokens: Sequence[int] | None = None) -> None:
        if not self._shadows or not keys:
            return
        if not self._fed:
            self._fed = True
            self._rebuild(now, rerank=True)  # leave the LRU fallback order
        for table in self._tables:
            table.observe(keys)
        capacity = self._shadows[0].capacity
        decay = 2.0 ** (-len(keys) / (self.WINDOW * capacity))
        saved = [shadow.replay(keys, now, tokens) for shadow in self._shadows]
        lead = saved[self._leader]
        for i, x in enumerate(saved):
            d = x - lead
            self._saved[i] = self._saved[i] * decay + x
            self._adv[i] = self._adv[i] * decay + d
            self._var[i] = self._var[i] * decay + d * d
        self._events += len(keys)
        if self._events >= self._next_switch_at:
            self._maybe_switch(now, capacity)

    def _maybe_switch(self, now: float, capacity: int) -> None:
        adv, var = self._adv, self._var
        best = max(range(len(adv)), key=adv.__getitem__)
        if adv[best] > 0.0 and adv[best] > self.Z * math.sqrt(var[best]):
            self._leader = best
            self._rebuild(now, rerank=True)  # O(n), at most once per `capacity` block-events
            self._next_switch_at = self._events + capacity
            k = len(adv)
            self._adv, self._var = [0.0] * k, [0.0] * k

    def _shadow_changed(self, slot: int, key: Hashable, now: float) -> None:
        """A key entered or left a shadow: re-rank the real block if that shadow leads."""
        if slot == self._leader:
            node = self._nodes.get(key)
            if node is not None and node.policy_data is not None:  # evictable
                self._push(node, now)

    # --- ranking and admission -----------------------------------------------------
    def priority(self, node: BlockNode, now: float) -> Any:
        if not self._fed:
            return (False, node.last_access)  # nothing learned yet: LRU order
        in_leader = node.key in self._shadows[self._leader].index
        return (in_leader, block_priority(self._tables[self._leader], node))

    def admit(self, key: Hashable, parent: BlockNode | None, now: float) -> bool:
        if not self._fed or self._size < self.capacity:  # type: ignore[operator]
            return True
        return key in self._shadows[self._leader].index

    def pick_victim(self, now: float) -> BlockNode | None:
        if self.capacity is None:  # the owner never said: it is full now
            super().set_capacity(max(1, self._size))
            self._build(self.capacity, now)  # type: ignore[arg-type]
        return super().pick_victim(now)

    # --- bookkeeping ---------------------------------------------------------------
    def on_insert(self, node: BlockNode, now: float) -> None:
        self._size += 1
        self._nodes[node.key] = node

    def on_remove(self, node: BlockNode, now: float) -> None:
        self._size -= 1
        self._nodes.pop(node.key, None)

    def reset(self) -> None:
        super().reset()
        self._size = 0
        self._nodes.clear()
        self._fed = False
        if self.capacity is not None:
            self._build(self.capacity, 0.0)
