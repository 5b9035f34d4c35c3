"""The redundancy service: corpora in the database, their indexes in memory.

Writes go to the database only (one transaction each, bumping the corpus
revision). Reads bring the cached index of a corpus up to that revision by
diffing document ids: new rows are indexed from their stored signatures and
embeddings, removed ones dropped. So several replicas stay consistent, an
index is never half-updated by a failed write, and a restart rebuilds from
the stored rows without re-embedding anything.

CPU-bound work (featurising, LSH, embeddings, passages) runs in a worker
thread while the corpus' lock is held, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from business_modules.redundancy.detector import Detector
from business_modules.redundancy.embeddings import embedding_bytes, embedding_from_bytes
from business_modules.redundancy.errors import InvalidInputError, LimitExceededError
from business_modules.redundancy.features import Featurizer
from business_modules.redundancy.index import CorpusIndex
from business_modules.redundancy.models import CanonicalRule, CorpusRecord, DocumentRecord, Match, Method, NewDocument
from business_modules.redundancy.repository import CorpusRepository, PreparedDocument
from business_modules.redundancy.text import content_hash


class RedundancyService:
    """Corpus CRUD, duplicate reports and searches for every tenant."""

    def __init__(
        self, repository: CorpusRepository, detector: Detector, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repository = repository
        self.detector = detector
        self.settings = detector.settings
        self._clock = clock
        self._started = clock()
        self._indexes: OrderedDict[str, CorpusIndex] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- corpora ---------------------------------------------------------
    async def create_corpus(self, *, tenant: str, name: str, description: str = "") -> CorpusRecord:
        """A new empty corpus (ConflictError when the name is taken)."""
        return await self.repository.create_corpus(tenant=tenant, name=name, description=description)

    async def get_corpus(self, *, tenant: str, name: str) -> CorpusRecord:
        """A corpus by name (NotFoundError)."""
        return await self.repository.get_corpus(tenant=tenant, name=name)

    async def list_corpora(self, *, tenant: str, limit: int, offset: int) -> list[CorpusRecord]:
        """A page of the tenant's corpora, by name."""
        return await self.repository.list_corpora(tenant=tenant, limit=limit, offset=offset)

    async def delete_corpus(self, *, tenant: str, name: str) -> None:
        """Delete a corpus, its documents and its cached index."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        await self.repository.delete_corpus(corpus)
        self._indexes.pop(corpus.id, None)
        self._locks.pop(corpus.id, None)

    # -- documents -------------------------------------------------------
    async def add_documents(self, *, tenant: str, name: str, documents: Sequence[NewDocument]) -> list[DocumentRecord]:
        """Add documents all or none (InvalidInputError, LimitExceededError, ConflictError)."""
        if not documents:
            raise InvalidInputError("no documents given")
        if len(documents) > self.settings.max_documents_per_request:
            raise LimitExceededError(
                f"{len(documents)} documents in one request; the limit is {self.settings.max_documents_per_request}"
            )
        names = [d.name for d in documents if d.name is not None]
        if len(names) != len(set(names)):
            raise InvalidInputError("document names repeat within the request")
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        prepared = await asyncio.to_thread(self._prepare, documents)
        return await self.repository.add_documents(
            corpus, prepared, max_documents=self.settings.max_documents_per_corpus
        )

    def _prepare(self, documents: Sequence[NewDocument]) -> list[PreparedDocument]:
        featurizer: Featurizer = self.detector.featurizer
        out = []
        for position, doc in enumerate(documents):
            if len(doc.text) > self.settings.max_content_chars:
                raise InvalidInputError(
                    f"document {position} has {len(doc.text)} characters; the limit is {self.settings.max_content_chars}"
                )
            features = featurizer.features(doc.text)
            if not features.shingles:
                raise InvalidInputError(f"document {position} has no words")
            out.append(
                PreparedDocument(
                    text=doc.text,
                    name=doc.name,
                    metadata=doc.metadata,
                    content_hash=content_hash(doc.text),
                    word_count=features.word_count,
                    minhash=featurizer.minhash_bytes(features.minhash),
                )
            )
        return out

    async def remove_document(self, *, tenant: str, name: str, doc_id: str) -> None:
        """Remove one document (NotFoundError)."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        await self.repository.remove_document(corpus, doc_id)

    async def list_documents(self, *, tenant: str, name: str, limit: int, offset: int) -> list[DocumentRecord]:
        """A page of a corpus' documents (without text), in the order added."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        return await self.repository.list_documents(corpus, limit=limit, offset=offset)

    async def get_document(self, *, tenant: str, name: str, doc_id: str) -> DocumentRecord:
        """One document with its text (NotFoundError)."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        return await self.repository.get_document(corpus, doc_id)

    # -- detection -------------------------------------------------------
    async def duplicates(
        self,
        *,
        tenant: str,
        name: str,
        method: Method,
        threshold: float | None = None,
        rule: CanonicalRule = CanonicalRule.EARLIEST,
        passages: bool = True,
        max_pairs: int | None = None,
    ) -> dict[str, Any]:
        """The duplicate report of a corpus by one method."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        async with self._lock(corpus.id):
            index = await self._synced_index(corpus)
            await self._embed_if_needed(corpus, index, method)
            return await asyncio.to_thread(
                self.detector.duplicates,
                index,
                corpus=corpus.name,
                method=method,
                threshold=threshold,
                rule=rule,
                passages=passages,
                max_pairs=max_pairs,
            )

    async def search(
        self,
        *,
        tenant: str,
        name: str,
        text: str,
        method: Method,
        threshold: float | None = None,
        top_k: int = 10,
        passages: bool = True,
    ) -> list[Match]:
        """Corpus documents that `text` duplicates or reuses, best first."""
        if len(text) > self.settings.max_content_chars:
            raise InvalidInputError(f"text has {len(text)} characters; the limit is {self.settings.max_content_chars}")
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        async with self._lock(corpus.id):
            index = await self._synced_index(corpus)
            await self._embed_if_needed(corpus, index, method)
            return await asyncio.to_thread(
                self.detector.search, index, text, method, threshold, top_k=top_k, passages=passages
            )

    async def document_names(self, *, tenant: str, name: str) -> dict[str, str | None]:
        """id -> name of every document of a corpus (from its synced index)."""
        corpus = await self.repository.get_corpus(tenant=tenant, name=name)
        async with self._lock(corpus.id):
            index = await self._synced_index(corpus)
            return {d.id: d.name for d in index.docs.values()}

    # -- stats -----------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """Process counters plus stored totals, for GET /stats."""
        corpora, documents = await self.repository.count_corpora()
        encoder = self.detector.encoder
        return {
            "uptime_s": self._clock() - self._started,
            "corpora": corpora,
            "documents": documents,
            "cached_indexes": len(self._indexes),
            "embedding_model_loaded": bool(getattr(encoder, "loaded", False)),
            "default_thresholds": {m.value: self.settings.default_threshold(m) for m in Method},
        }

    # -- index cache -----------------------------------------------------
    def _lock(self, corpus_id: str) -> asyncio.Lock:
        return self._locks.setdefault(corpus_id, asyncio.Lock())

    async def _synced_index(self, corpus: CorpusRecord) -> CorpusIndex:
        """The cached index of `corpus`, brought up to its stored documents."""
        index = self._indexes.get(corpus.id)
        if index is not None and index.revision == corpus.revision:
            self._indexes.move_to_end(corpus.id)
            return index
        if index is None:
            index = self.detector.new_index()
        stored_ids = await self.repository.document_ids(corpus.id)
        for gone in [doc_id for doc_id in index.docs if doc_id not in stored_ids]:
            index.remove(gone)
        missing = [doc_id for doc_id in stored_ids if doc_id not in index]
        rows = await self.repository.stored_documents(corpus.id, missing)
        entries = await asyncio.to_thread(
            lambda: [
                self.detector.indexed(
                    doc_id=row.record.id,
                    seq=row.record.seq,
                    text=row.record.text,
                    name=row.record.name,
                    minhash_blob=row.minhash,
                    embedding=embedding_from_bytes(row.embedding),
                )
                for row in rows
            ]
        )
        for entry in entries:
            if entry.id not in index:
                index.add(entry)
        index.revision = corpus.revision
        self._indexes[corpus.id] = index
        self._indexes.move_to_end(corpus.id)
        while len(self._indexes) > self.settings.cached_corpora:
            self._indexes.popitem(last=False)
        return index

    async def _embed_if_needed(self, corpus: CorpusRecord, index: CorpusIndex, method: Method) -> None:
        if method is not Method.SEMANTIC or not index.missing_embeddings():
            return
        new = await asyncio.to_thread(self.detector.fill_embeddings, index)
        await self.repository.save_embeddings(corpus.id, {i: embedding_bytes(v) for i, v in new.items()})
