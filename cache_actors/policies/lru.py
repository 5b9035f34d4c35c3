"""Least recently used first: the baseline every other policy is scored against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cache_actors.policies.base import PriorityPolicy

if TYPE_CHECKING:
    from cache_actors.core.block_index import BlockNode


class LRUPolicy(PriorityPolicy):
    """Least recently used first."""

    name = "lru"

    def priority(self, node: BlockNode, now: float) -> Any:
        return node.last_access
