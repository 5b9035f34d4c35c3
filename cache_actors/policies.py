"""Eviction policies: which evictable leaf block goes first.

A policy only orders; the `BlockIndex` decides what is evictable (unreferenced
leaves) and tells the policy about every change. Policies are strategy classes
behind a name registry, scored by the trace replay of ``blatam bench policies``
on prefill tokens saved.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Hashable

from cache_actors.block_index import BlockNode


class EvictionPolicy(ABC):
    """Strategy interface. `now` is the caller's clock (seconds or a counter)."""

    name: ClassVar[str]

    def on_insert(self, node: BlockNode, now: float) -> None:
        """A block was cached (it becomes evictable right after)."""

    def on_access(self, node: BlockNode, now: float) -> None:
        """A request reused the block (``node.hits``/``last_access`` already updated)."""

    @abstractmethod
    def on_evictable(self, node: BlockNode, now: float) -> None:
        """The block became an unreferenced leaf and may be offered as a victim."""

    @abstractmethod
    def on_unevictable(self, node: BlockNode) -> None:
        """The block is held or got a child: it must not be offered any more."""

    def on_remove(self, node: BlockNode, now: float) -> None:
        """The block left the cache (evicted or removed)."""

    def admit(self, key: Hashable, parent: BlockNode | None, now: float) -> bool:
        """Whether a newly computed block is worth caching at all."""
        return True

    @abstractmethod
    def pick_victim(self, now: float) -> BlockNode | None:
        """The evictable block to evict next, or None if there is none."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything (the cache was cleared)."""


class PriorityPolicy(EvictionPolicy):
    """Min-heap of evictable blocks by a priority fixed when the block is pushed.

    Stale heap entries are skipped lazily (an entry is live only while its
    sequence number is the one stored in ``node.policy_data``), so every event
    is O(log n).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[Any, int, BlockNode]] = []
        self._seq = itertools.count()

    @abstractmethod
    def priority(self, node: BlockNode, now: float) -> Any:
        """Smaller is evicted first."""

    def _push(self, node: BlockNode, now: float) -> None:
        seq = next(self._seq)
        node.policy_data = seq
        heapq.heappush(self._heap, (self.priority(node, now), seq, node))

    def on_evictable(self, node: BlockNode, now: float) -> None:
        self._push(node, now)

    def on_access(self, node: BlockNode, now: float) -> None:
        if node.policy_data is not None:  # re-rank an evictable block
            self._push(node, now)

    def on_unevictable(self, node: BlockNode) -> None:
        node.policy_data = None

    def pick_victim(self, now: float) -> BlockNode | None:
        heap = self._heap
        while heap:
            _, seq, node = heapq.heappop(heap)
            if node.policy_data == seq:
                node.policy_data = None
                return node
        return None

    def reset(self) -> None:
        self._heap.clear()


class LRUPolicy(PriorityPolicy):
    """Least recently used first."""

    name = "lru"

    def priority(self, node: BlockNode, now: float) -> Any:
        return node.last_access


class LFUPolicy(PriorityPolicy):
    """Least frequently used first; ties go to the least recently used."""

    name = "lfu"

    def priority(self, node: BlockNode, now: float) -> Any:
        return (node.hits, node.last_access)


POLICY_REGISTRY: dict[str, Callable[[], EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
    LFUPolicy.name: LFUPolicy,
}


def register_policy(name: str, factory: Callable[[], EvictionPolicy]) -> None:
    """Make a policy available by name (to the engine config and the benchmark)."""
    POLICY_REGISTRY[name] = factory


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICY_REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; supported: {sorted(POLICY_REGISTRY)}") from None
