"""Duplicate clusters: connected components of the pair graph (union-find)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from business_modules.redundancy.models import CanonicalRule, Cluster, Pair


class UnionFind:
    """Disjoint sets over hashable items, with path halving and union by size."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}

    def find(self, item: str) -> str:
        """The representative of `item`'s set (an unseen item is its own set)."""
        if item not in self._parent:
            self._parent[item] = item
            self._size[item] = 1
            return item
        while self._parent[item] != item:
            self._parent[item] = self._parent[self._parent[item]]  # path halving
            item = self._parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        """Merge the sets of `a` and `b`."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def groups(self) -> list[list[str]]:
        """Every set with more than one member."""
        members: dict[str, list[str]] = {}
        for item in self._parent:
            members.setdefault(self.find(item), []).append(item)
        return [m for m in members.values() if len(m) > 1]


def build_clusters(
    pairs: Iterable[Pair],
    *,
    seq: Mapping[str, int],
    word_count: Mapping[str, int],
    rule: CanonicalRule = CanonicalRule.EARLIEST,
) -> list[Cluster]:
    """Clusters of documents joined by `pairs`, each with its canonical document.

    Members are listed canonical first, then in the order they were added;
    clusters are numbered from 1 in the order of their canonical document.

    Args:
        seq: order in which each document was added (lower = earlier).
        word_count: words per document (for the `longest` rule).
        rule: how the canonical document is chosen (see `CanonicalRule`).
    """
    uf = UnionFind()
    for pair in pairs:
        uf.union(pair.a, pair.b)

    def canonical_key(doc_id: str) -> tuple[int, int]:
        if rule is CanonicalRule.LONGEST:
            return (-word_count[doc_id], seq[doc_id])
        return (seq[doc_id], 0)

    ranked = []
    for group in uf.groups():
        canonical = min(group, key=canonical_key)
        rest = sorted((m for m in group if m != canonical), key=lambda m: seq[m])
        ranked.append((seq[canonical], canonical, [canonical, *rest]))
    ranked.sort()
    return [Cluster(id=i, canonical=c, members=m) for i, (_, c, m) in enumerate(ranked, start=1)]
