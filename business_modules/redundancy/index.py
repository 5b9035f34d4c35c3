"""In-memory index of one corpus: exact hashes, MinHash LSH, LSH Ensemble, embeddings.

The database is the source of truth; an index is a cache rebuilt from it and
kept in step by `add`/`remove` (the service syncs it on the corpus revision).

- exact: content hash -> ids, updated in place.
- near: one `MinHashLSH` per threshold bucket, built on first use and then
  updated in place on every add and remove.
- containment: one `MinHashLSHEnsemble` per threshold bucket. datasketch
  builds an ensemble in one pass over all entries (its partitions depend on
  the size distribution) and has no insert or remove, so any change drops the
  ensembles and the next containment query rebuilds them from the stored
  signatures (no text is rehashed).
- semantic: a matrix of unit document embeddings, rows appended and deleted
  in place once built.

LSH parameters favour recall (false negatives weigh 0.8): every candidate is
checked against the exact shingle sets, so a false positive costs only time.
A threshold is served by the bucket at or below it (multiples of 0.05), so
candidates are a superset of the answer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHashLSH, MinHashLSHEnsemble

from business_modules.redundancy.features import Features

LSH_WEIGHTS = (0.2, 0.8)  # (false positive, false negative)
BUCKET_STEP = 0.05
MIN_BUCKET = 0.01
MAX_CACHED_STRUCTURES = 4  # per kind and corpus: distinct thresholds in use
ENSEMBLE_PARTITIONS = 16


@dataclass(slots=True)
class IndexedDocument:
    """One document as the detectors see it."""

    id: str
    seq: int
    name: str | None
    text: str
    content_hash: str
    features: Features
    embedding: np.ndarray | None = None


def threshold_bucket(threshold: float) -> float:
    """The LSH build threshold serving `threshold`: the 0.05 step at or below it."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return max(MIN_BUCKET, round(math.floor(threshold / BUCKET_STEP + 1e-9) * BUCKET_STEP, 2))


class CorpusIndex:
    """The searchable state of one corpus at one `revision`."""

    def __init__(self, *, num_perm: int, revision: int = 0) -> None:
        self.num_perm = num_perm
        self.revision = revision
        self.docs: dict[str, IndexedDocument] = {}
        self._by_hash: dict[str, set[str]] = {}
        self._lsh: OrderedDict[float, MinHashLSH] = OrderedDict()
        self._ensembles: OrderedDict[float, MinHashLSHEnsemble] = OrderedDict()
        self._emb_ids: list[str] | None = None
        self._emb_matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.docs

    def ordered(self) -> list[IndexedDocument]:
        """Documents in the order they were added (by `seq`)."""
        return sorted(self.docs.values(), key=lambda d: d.seq)

    def add(self, doc: IndexedDocument) -> None:
        """Index one document; an id already present is an error (nothing changes)."""
        if doc.id in self.docs:
            raise ValueError(f"document {doc.id} is already indexed")
        if len(doc.features.minhash) != self.num_perm:
            raise ValueError(f"document {doc.id} has {len(doc.features.minhash)} permutations, index has {self.num_perm}")
        self.docs[doc.id] = doc
        self._by_hash.setdefault(doc.content_hash, set()).add(doc.id)
        for lsh in self._lsh.values():
            lsh.insert(doc.id, doc.features.minhash, check_duplication=False)
        self._ensembles.clear()
        if self._emb_ids is not None:
            if doc.embedding is None:
                self._emb_ids = self._emb_matrix = None
            else:
                self._emb_ids.append(doc.id)
                self._emb_matrix = np.vstack([self._emb_matrix, doc.embedding[None, :]])

    def remove(self, doc_id: str) -> None:
        """Drop one document from every structure (unknown ids are ignored)."""
        doc = self.docs.pop(doc_id, None)
        if doc is None:
            return
        ids = self._by_hash[doc.content_hash]
        ids.discard(doc_id)
        if not ids:
            del self._by_hash[doc.content_hash]
        for lsh in self._lsh.values():
            lsh.remove(doc_id)
        self._ensembles.clear()
        if self._emb_ids is not None:
            row = self._emb_ids.index(doc_id)
            del self._emb_ids[row]
            self._emb_matrix = np.delete(self._emb_matrix, row, axis=0)

    def same_hash(self, content_hash: str) -> set[str]:
        """Ids of documents whose normalised text hashes to `content_hash`."""
        return set(self._by_hash.get(content_hash, ()))

    def near_candidates(self, minhash: LeanMinHash, threshold: float) -> set[str]:
        """Ids that may have Jaccard >= `threshold` with `minhash`'s set."""
        if not self.docs:
            return set()
        return set(self._near_lsh(threshold_bucket(threshold)).query(minhash))

    def containment_candidates(self, minhash: LeanMinHash, size: int, threshold: float) -> set[str]:
        """Ids that may contain >= `threshold` of a set of `size` elements."""
        if not self.docs or size == 0:
            return set()
        return set(self._ensemble(threshold_bucket(threshold)).query(minhash, size))

    def missing_embeddings(self) -> list[str]:
        """Ids of documents whose embedding is not computed yet."""
        return [d.id for d in self.docs.values() if d.embedding is None]

    def set_embedding(self, doc_id: str, embedding: np.ndarray) -> None:
        """Attach a unit embedding to a document (the matrix is rebuilt on next use)."""
        self.docs[doc_id].embedding = embedding
        self._emb_ids = self._emb_matrix = None

    def embedding_matrix(self) -> tuple[list[str], np.ndarray]:
        """(ids, unit row vectors) of every document; all must have embeddings."""
        if self._emb_ids is None:
            missing = self.missing_embeddings()
            if missing:
                raise ValueError(f"{len(missing)} documents have no embedding yet")
            ids = [d.id for d in self.docs.values()]
            matrix = (
                np.stack([self.docs[i].embedding for i in ids]).astype(np.float32)
                if ids
                else np.zeros((0, 0), dtype=np.float32)
            )
            self._emb_ids, self._emb_matrix = ids, matrix
        return list(self._emb_ids), self._emb_matrix

    def _near_lsh(self, bucket: float) -> MinHashLSH:
        lsh = self._lsh.get(bucket)
        if lsh is None:
            lsh = MinHashLSH(threshold=bucket, num_perm=self.num_perm, weights=LSH_WEIGHTS)
            with lsh.insertion_session() as session:
                for doc in self.docs.values():
                    session.insert(doc.id, doc.features.minhash, check_duplication=False)
            self._lsh[bucket] = lsh
            if len(self._lsh) > MAX_CACHED_STRUCTURES:
                self._lsh.popitem(last=False)
        self._lsh.move_to_end(bucket)
        return lsh

    def _ensemble(self, bucket: float) -> MinHashLSHEnsemble:
        ensemble = self._ensembles.get(bucket)
        if ensemble is None:
            ensemble = MinHashLSHEnsemble(
                threshold=bucket,
                num_perm=self.num_perm,
                num_part=min(ENSEMBLE_PARTITIONS, len(self.docs)),
                weights=LSH_WEIGHTS,
            )
            ensemble.index(
                (d.id, d.features.minhash, max(1, len(d.features.shingles))) for d in self.docs.values()
            )
            self._ensembles[bucket] = ensemble
            if len(self._ensembles) > MAX_CACHED_STRUCTURES:
                self._ensembles.popitem(last=False)
        self._ensembles.move_to_end(bucket)
        return ensemble
