"""Least frequently used first; ties go to the least recently used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cache_actors.policies.base import PriorityPolicy

if TYPE_CHECKING:
    from cache_actors.core.block_index import BlockNode


class LFUPolicy(PriorityPolicy):
    """Least frequently used first; ties go to the least recently used."""

    name = "lfu"

    def priority(self, node: BlockNode, now: float) -> Any:
        return (node.hits, node.last_access)
