"""The strategy interface of eviction: which evictable leaf block goes first.

A policy only orders; the `BlockIndex` decides what is evictable (unreferenced
leaves) and tells the policy about every change. `PriorityPolicy` is the
shared base of the policies that rank blocks by a priority (a lazy heap).
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Hashable, Sequence

if TYPE_CHECKING:
    from cache_actors.core.block_index import BlockNode


class EvictionPolicy(ABC):
    """Strategy interface. `now` is the caller's clock (seconds or a counter)."""

    name: ClassVar[str]

    #: Blocks the owner can hold, once it said so with `set_capacity` (None: unknown).
    capacity: int | None = None

    def set_capacity(self, num_blocks: int) -> None:
        """The owner's pool holds ``num_blocks`` blocks (called at start and on resize).

        Optional: policies that size internal segments or decide admission
        need it; the others ignore it.
        """
        if num_blocks < 1:
            raise ValueError(f"capacity must be at least one block, got {num_blocks}")
        self.capacity = num_blocks

    def on_request(self, keys: Sequence[Hashable], now: float, tokens: Sequence[int] | None = None) -> None:
        """A request starts and will use ``keys`` in order (``tokens`` per block, if known).

        Called by `BlockIndex.begin_request` before the prefix match, with the
        whole prompt, including the blocks that will not be cached. Policies
        that learn from the request stream (frequencies, shadow caches) use it;
        the others ignore it.
        """

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
    is O(log n). When stale entries outnumber live ones the heap is rebuilt
    from the live ones (O(n) once per n pushes: amortized O(1)).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[Any, int, BlockNode]] = []
        self._seq = itertools.count()
        self._live = 0  # evictable blocks, i.e. live heap entries

    @abstractmethod
    def priority(self, node: BlockNode, now: float) -> Any:
        """Smaller is evicted first."""

    def _push(self, node: BlockNode, now: float) -> None:
        seq = next(self._seq)
        node.policy_data = seq
        heapq.heappush(self._heap, (self.priority(node, now), seq, node))
        if len(self._heap) > 2 * self._live + 64:
            self._rebuild(now, rerank=False)

    def _rebuild(self, now: float, *, rerank: bool) -> None:
        """Drop stale entries; with ``rerank``, recompute every live priority too."""
        live = [e for e in self._heap if e[2].policy_data == e[1]]
        if rerank:
            live = [(self.priority(node, now), seq, node) for _, seq, node in live]
        heapq.heapify(live)
        self._heap = live

    def _peek(self) -> tuple[Any, BlockNode] | None:
        """(priority, block) of the next victim, without removing it."""
        heap = self._heap
        while heap:
            prio, seq, node = heap[0]
            if node.policy_data == seq:
                return prio, node
            heapq.heappop(heap)
        return None

    def on_evictable(self, node: BlockNode, now: float) -> None:
        if node.policy_data is None:
            self._live += 1
        self._push(node, now)

    def on_access(self, node: BlockNode, now: float) -> None:
        if node.policy_data is not None:  # re-rank an evictable block
            self._push(node, now)

    def on_unevictable(self, node: BlockNode) -> None:
        if node.policy_data is not None:
            self._live -= 1
        node.policy_data = None

    def pick_victim(self, now: float) -> BlockNode | None:
        heap = self._heap
        while heap:
            _, seq, node = heapq.heappop(heap)
            if node.policy_data == seq:
                node.policy_data = None
                self._live -= 1
                return node
        return None

    def reset(self) -> None:
        self._heap.clear()
        self._live = 0
