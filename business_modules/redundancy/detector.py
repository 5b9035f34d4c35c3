"""The detector: turns texts into index entries and answers searches with evidence.

Plain synchronous Python shared by the service (which adds storage and
caching) and the benchmark (which builds an index straight from files).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from business_modules.redundancy.clustering import build_clusters
from business_modules.redundancy.detection import Probe, all_pairs, query
from business_modules.redundancy.embeddings import Encoder, document_embeddings
from business_modules.redundancy.errors import InvalidInputError
from business_modules.redundancy.features import Featurizer
from business_modules.redundancy.index import CorpusIndex, IndexedDocument
from business_modules.redundancy.models import CanonicalRule, Match, Method, Pair
from business_modules.redundancy.passages import Passage, matching_passages
from business_modules.redundancy.report import build_report
from business_modules.redundancy.settings import RedundancySettings
from business_modules.redundancy.text import Token, content_hash, tokenize


class Detector:
    """Featurising, embedding, searching and reporting with one set of settings."""

    def __init__(self, settings: RedundancySettings, encoder: Encoder | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.featurizer = Featurizer(
            shingle_words=settings.shingle_words, num_perm=settings.num_perm, seed=settings.minhash_seed
        )

    def new_index(self, revision: int = 0) -> CorpusIndex:
        """An empty index with this detector's MinHash size."""
        return CorpusIndex(num_perm=self.settings.num_perm, revision=revision)

    def threshold(self, method: Method, threshold: float | None) -> float:
        """`threshold`, or the method's default when None."""
        return self.settings.default_threshold(method) if threshold is None else threshold

    def indexed(
        self,
        *,
        doc_id: str,
        seq: int,
        text: str,
        name: str | None = None,
        minhash_blob: bytes | None = None,
        embedding: np.ndarray | None = None,
    ) -> IndexedDocument:
        """An index entry for a text (reusing a stored signature when given)."""
        features = (
            self.featurizer.with_stored_minhash(text, minhash_blob)
            if minhash_blob
            else self.featurizer.features(text)
        )
        if not features.shingles:
            raise InvalidInputError("the text has no words")
        return IndexedDocument(doc_id, seq, name, text, content_hash(text), features, embedding)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit document embeddings (needs an encoder)."""
        if self.encoder is None:
            raise RuntimeError("this detector has no encoder: semantic search is unavailable")
        return document_embeddings(self.encoder, texts, chunk_words=self.settings.embedding_chunk_words)

    def fill_embeddings(self, index: CorpusIndex) -> dict[str, np.ndarray]:
        """Embed every document that has no embedding yet; return the new ones."""
        missing = index.missing_embeddings()
        if not missing:
            return {}
        vectors = self.embed([index.docs[i].text for i in missing])
        new = dict(zip(missing, vectors, strict=True))
        for doc_id, vector in new.items():
            index.set_embedding(doc_id, vector)
        return new

    def probe(self, text: str, method: Method) -> Probe:
        """A query text prepared for `method`."""
        features = self.featurizer.features(text)
        if not features.shingles:
            raise InvalidInputError("the text has no words")
        embedding = self.embed([text])[0] if method is Method.SEMANTIC else None
        return Probe(content_hash(text), features, embedding)

    def search(
        self,
        index: CorpusIndex,
        text: str,
        method: Method,
        threshold: float | None = None,
        *,
        top_k: int = 10,
        passages: bool = True,
    ) -> list[Match]:
        """Corpus documents that `text` duplicates or reuses, best first, with passages."""
        if method is Method.SEMANTIC:
            self.fill_embeddings(index)
        matches = query(index, self.probe(text, method), method, self.threshold(method, threshold), top_k=top_k)
        if not passages or self.settings.max_passages == 0:
            return matches
        tokens = tokenize(text)
        return [
            replace(m, passages=self._passages(text, tokens, index.docs[m.doc_id].text))
            for m in matches
        ]

    def duplicates(
        self,
        index: CorpusIndex,
        *,
        corpus: str,
        method: Method,
        threshold: float | None = None,
        rule: CanonicalRule = CanonicalRule.EARLIEST,
        passages: bool = True,
        max_pairs: int | None = None,
    ) -> dict[str, Any]:
        """The duplicate report of a whole corpus (pairs, clusters, redundancy)."""
        limit = self.settings.max_pairs if max_pairs is None else max_pairs
        value = self.threshold(method, threshold)
        if method is Method.SEMANTIC:
            self.fill_embeddings(index)
        pairs, complete = all_pairs(index, method, value)
        if passages and self.settings.max_passages:
            pairs[:limit] = [self._with_passages(index, p) for p in pairs[:limit]]
        docs = index.docs.values()
        clusters = build_clusters(
            pairs,
            seq={d.id: d.seq for d in docs},
            word_count={d.id: d.features.word_count for d in docs},
            rule=rule,
        )
        return build_report(
            corpus=corpus,
            method=method,
            threshold=value,
            names={d.id: d.name for d in index.ordered()},
            pairs=pairs,
            clusters=clusters,
            complete=complete,
            max_pairs=limit,
            canonical_rule=rule.value,
        )

    def _with_passages(self, index: CorpusIndex, pair: Pair) -> Pair:
        a_text = index.docs[pair.a].text
        return replace(pair, passages=self._passages(a_text, tokenize(a_text), index.docs[pair.b].text))

    def _passages(self, a_text: str, a_tokens: list[Token], b_text: str) -> list[Passage]:
        return matching_passages(
            a_text,
            a_tokens,
            tokenize(b_text),
            min_words=self.settings.passage_min_words,
            max_passages=self.settings.max_passages,
        )
