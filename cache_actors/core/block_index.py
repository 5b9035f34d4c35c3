"""The prefix tree of cached blocks, without any tensors.

A block is only useful after its parent (a request can reuse block *i* only if
it reuses 0..i-1), so the cached blocks form a forest keyed by chained hashes.
This index is shared by the real cache (nodes carry a pool slot) and by the
trace simulator of ``blatam bench policies`` (nodes carry none), so the policy
scored by the benchmark is exactly the one that runs in production.

Invariants:
- a node is *evictable* iff no request holds it (``ref_cnt == 0``) and no cached
  child depends on it (``num_children == 0``): leaves go before ancestors;
- the policy is told about every change of evictability, and only ever offers
  evictable nodes as victims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from cache_actors.policies.base import EvictionPolicy


@dataclass(slots=True, eq=False)
class BlockNode:
    """Metadata of one cached block (no KV)."""

    key: Hashable
    parent: "BlockNode | None"
    depth: int
    slot: int | None = None
    num_tokens: int = 0
    num_children: int = 0
    ref_cnt: int = 0
    hits: int = 0
    created: float = 0.0
    last_access: float = 0.0
    #: Free for the policy's own bookkeeping (queue membership, heap version...).
    policy_data: Any = None
    #: Free for the owner (e.g. checksum of the stored bytes).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evictable(self) -> bool:
        return self.ref_cnt == 0 and self.num_children == 0


class BlockIndex:
    """Hash -> node map with parent links, lock counts and an eviction policy."""

    def __init__(self, policy: "EvictionPolicy") -> None:
        self.policy = policy
        self._nodes: dict[Hashable, BlockNode] = {}

    # --- lookup -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._nodes

    def __iter__(self) -> Iterator[BlockNode]:
        return iter(self._nodes.values())

    def get(self, key: Hashable) -> BlockNode | None:
        return self._nodes.get(key)

    def begin_request(
        self, keys: Sequence[Hashable], now: float, tokens: Sequence[int] | None = None
    ) -> list[BlockNode]:
        """Start of a request: show the policy the whole prompt, then match its prefix.

        Same result as `match_prefix`; learning policies (``adaptive``) need
        this call once per request (``tokens``: tokens of each block, if known).
        """
        self.policy.on_request(keys, now, tokens)
        return self.match_prefix(keys)

    def match_prefix(self, keys: Sequence[Hashable]) -> list[BlockNode]:
        """Nodes of the longest cached prefix of ``keys`` (stops at the first miss)."""
        found: list[BlockNode] = []
        for key in keys:
            node = self._nodes.get(key)
            if node is None:
                break
            found.append(node)
        return found

    # --- access and locks -----------------------------------------------------------
    def touch(self, nodes: Iterable[BlockNode], now: float) -> None:
        """Record a hit on each node (a request reused it)."""
        for node in nodes:
            node.hits += 1
            node.last_access = now
            self.policy.on_access(node, now)

    def lock(self, nodes: Iterable[BlockNode]) -> None:
        """Pin nodes while a request uses them: they cannot be evicted."""
        for node in nodes:
            if node.evictable:
                self.policy.on_unevictable(node)
            node.ref_cnt += 1

    def unlock(self, nodes: Iterable[BlockNode], now: float) -> None:
        for node in nodes:
            assert node.ref_cnt > 0, "unlock without lock"
            node.ref_cnt -= 1
            if node.evictable:
                self.policy.on_evictable(node, now)

    # --- insert and remove --------------------------------------------------------
    def insert(
        self,
        key: Hashable,
        parent: BlockNode | None,
        now: float,
        *,
        slot: int | None = None,
        num_tokens: int = 0,
    ) -> BlockNode:
        """Add a block whose parent is cached (or which starts a chain)."""
        assert key not in self._nodes, "block already cached"
        if parent is not None:
            assert self._nodes.get(parent.key) is parent, "parent must be cached"
            if parent.evictable:
                self.policy.on_unevictable(parent)
            parent.num_children += 1
        node = BlockNode(
            key=key,
            parent=parent,
            depth=0 if parent is None else parent.depth + 1,
            slot=slot,
            num_tokens=num_tokens,
            created=now,
            last_access=now,
        )
        self._nodes[key] = node
        self.policy.on_insert(node, now)
        self.policy.on_evictable(node, now)
        return node

    def remove(self, node: BlockNode, now: float) -> None:
        """Drop an evictable node; its parent may become an evictable leaf."""
        assert node.evictable, "only unreferenced leaves can be removed"
        assert self._nodes.get(node.key) is node
        del self._nodes[node.key]
        self.policy.on_unevictable(node)
        self.policy.on_remove(node, now)
        parent = node.parent
        if parent is not None:
            parent.num_children -= 1
            if parent.evictable:
                self.policy.on_evictable(parent, now)

    def pop_victim(self, now: float) -> BlockNode | None:
        """Remove and return the block the policy picks, or None if none is evictable."""
        node = self.policy.pick_victim(now)
        if node is None:
            return None
        assert node.evictable and self._nodes.get(node.key) is node, "policy offered a non-evictable block"
        self.remove(node, now)
        return node

    def evictable_nodes(self) -> list[BlockNode]:
        """Every node that may be evicted now (for custom `_evict` overrides)."""
        return [n for n in self._nodes.values() if n.evictable]

    def clear(self) -> None:
        self._nodes.clear()
        self.policy.reset()
