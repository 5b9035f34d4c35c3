"""Duplicate detection over a `CorpusIndex`: one query text, or all pairs.

Each method proposes candidates from its index and then checks them exactly:
near and containment on the real shingle sets, semantic on the real cosine.
Scores are therefore exact for every pair returned; only recall depends on
the LSH (tuned for recall, see index.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from business_modules.redundancy.features import Features
from business_modules.redundancy.index import CorpusIndex, IndexedDocument
from business_modules.redundancy.models import Match, Method, Pair
from business_modules.redundancy.text import containment, jaccard

PAIR_HARD_LIMIT = 200_000  # pairs collected for clustering before giving up (flagged)
SEMANTIC_BLOCK_ROWS = 1024


@dataclass(frozen=True, slots=True)
class Probe:
    """A query text prepared for every method (embedding only when semantic is used)."""

    content_hash: str
    features: Features
    embedding: np.ndarray | None = None


def query(
    index: CorpusIndex,
    probe: Probe,
    method: Method,
    threshold: float,
    *,
    top_k: int | None = None,
    exclude: Iterable[str] = (),
) -> list[Match]:
    """Corpus documents matching `probe` by `method` with score >= `threshold`, best first.

    Scores: exact 1.0; near = Jaccard; containment = share of the probe's
    shingles found in the document (details also give the reverse share);
    semantic = cosine.
    """
    skip = set(exclude)
    matches: list[Match] = []
    if method is Method.EXACT:
        matches = [Match(i, 1.0, method) for i in index.same_hash(probe.content_hash) if i not in skip]
    elif method is Method.NEAR:
        for doc_id in index.near_candidates(probe.features.minhash, threshold) - skip:
            score = jaccard(probe.features.shingles, index.docs[doc_id].features.shingles)
            if score >= threshold:
                matches.append(Match(doc_id, score, method))
    elif method is Method.CONTAINMENT:
        size = len(probe.features.shingles)
        for doc_id in index.containment_candidates(probe.features.minhash, size, threshold) - skip:
            other = index.docs[doc_id].features.shingles
            score = containment(probe.features.shingles, other)
            if score >= threshold:
                details = {"query_in_document": score, "document_in_query": containment(other, probe.features.shingles)}
                matches.append(Match(doc_id, score, method, details))
    elif method is Method.SEMANTIC:
        if probe.embedding is None:
            raise ValueError("a semantic query needs the probe's embedding")
        ids, matrix = index.embedding_matrix()
        if ids:
            scores = matrix @ probe.embedding
            matches = [
                Match(doc_id, float(s), method)
                for doc_id, s in zip(ids, scores, strict=True)
                if s >= threshold and doc_id not in skip
            ]
    else:  # pragma: no cover - exhaustive over Method
        raise ValueError(f"unknown method {method!r}")
    matches.sort(key=lambda m: (-m.score, index.docs[m.doc_id].seq))
    return matches[:top_k] if top_k is not None else matches


def all_pairs(index: CorpusIndex, method: Method, threshold: float) -> tuple[list[Pair], bool]:
    """Every pair of corpus documents matching by `method`, best first.

    Returns (pairs, complete): `complete` is False when more than
    PAIR_HARD_LIMIT pairs exist and the rest were not collected. Exact
    duplicates are linked to the earliest copy only (k-1 pairs per group of
    k), which is enough for clusters and avoids k² pairs.
    """
    docs = index.ordered()
    pairs: dict[tuple[str, str], Pair] = {}

    def keep(a: IndexedDocument, b: IndexedDocument, score: float, details: dict[str, float] | None = None) -> bool:
        first, second = (a, b) if a.seq < b.seq else (b, a)
        pairs[(first.id, second.id)] = Pair(first.id, second.id, score, method, details or {})
        return len(pairs) < PAIR_HARD_LIMIT

    if method is Method.EXACT:
        groups: dict[str, list[IndexedDocument]] = {}
        for doc in docs:
            groups.setdefault(doc.content_hash, []).append(doc)
        for members in groups.values():
            for other in members[1:]:
                if not keep(members[0], other, 1.0):
                    return _sorted(pairs, index), False
    elif method is Method.NEAR:
        for doc in docs:
            for cand_id in index.near_candidates(doc.features.minhash, threshold):
                other = index.docs[cand_id]
                if other.seq <= doc.seq:
                    continue
                score = jaccard(doc.features.shingles, other.features.shingles)
                if score >= threshold and not keep(doc, other, score):
                    return _sorted(pairs, index), False
    elif method is Method.CONTAINMENT:
        for doc in docs:
            size = len(doc.features.shingles)
            for cand_id in index.containment_candidates(doc.features.minhash, size, threshold):
                other = index.docs[cand_id]
                first, second = (doc, other) if doc.seq < other.seq else (other, doc)
                if cand_id == doc.id or (first.id, second.id) in pairs:
                    continue
                a_in_b = containment(first.features.shingles, second.features.shingles)
                b_in_a = containment(second.features.shingles, first.features.shingles)
                score = max(a_in_b, b_in_a)
                if score >= threshold and not keep(first, second, score, {"a_in_b": a_in_b, "b_in_a": b_in_a}):
                    return _sorted(pairs, index), False
    elif method is Method.SEMANTIC:
        ids, matrix = index.embedding_matrix()
        for start in range(0, len(ids), SEMANTIC_BLOCK_ROWS):
            block = matrix[start : start + SEMANTIC_BLOCK_ROWS] @ matrix.T
            rows, cols = np.nonzero(block >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                a, b = index.docs[ids[start + r]], index.docs[ids[c]]
                if a.seq < b.seq and not keep(a, b, float(block[r, c])):
                    return _sorted(pairs, index), False
    else:  # pragma: no cover - exhaustive over Method
        raise ValueError(f"unknown method {method!r}")
    return _sorted(pairs, index), True


def _sorted(pairs: dict[tuple[str, str], Pair], index: CorpusIndex) -> list[Pair]:
    return sorted(pairs.values(), key=lambda p: (-p.score, index.docs[p.a].seq, index.docs[p.b].seq))
