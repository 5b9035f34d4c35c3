"""Corpora on the storage API (SQLite and PostgreSQL): CRUD, all-or-nothing adds,
revisions, and the service keeping its in-memory index in step with the rows."""

from __future__ import annotations

import pytest

from business_modules.redundancy import (
    ConflictError,
    Detector,
    InvalidInputError,
    LimitExceededError,
    Method,
    NewDocument,
    NotFoundError,
    RedundancySettings,
)
from business_modules.redundancy.repository import CorpusRepository
from business_modules.redundancy.service import RedundancyService
from business_modules.storage import Database

TEXT = "Inheritance lets a new class reuse the methods and fields of an existing class."
OTHER = "Relational databases store rows in tables and answer declarative queries quickly."


def service_on(database: Database, **settings: object) -> RedundancyService:
    return RedundancyService(CorpusRepository(database), Detector(RedundancySettings(**settings)))


async def test_corpus_crud_and_tenants(database: Database) -> None:
    service = service_on(database)
    created = await service.create_corpus(tenant="t1", name="news", description="d")
    assert (created.name, created.document_count, created.revision) == ("news", 0, 0)
    with pytest.raises(ConflictError):
        await service.create_corpus(tenant="t1", name="news")
    await service.create_corpus(tenant="t2", name="news")  # same name, other tenant
    await service.create_corpus(tenant="t1", name="blogs")
    assert [c.name for c in await service.list_corpora(tenant="t1", limit=10, offset=0)] == ["blogs", "news"]
    assert [c.name for c in await service.list_corpora(tenant="t1", limit=1, offset=1)] == ["news"]
    await service.delete_corpus(tenant="t1", name="news")
    with pytest.raises(NotFoundError):
        await service.get_corpus(tenant="t1", name="news")
    assert (await service.get_corpus(tenant="t2", name="news")).tenant == "t2"


async def test_documents_add_list_get_remove(database: Database) -> None:
    service = service_on(database)
    await service.create_corpus(tenant="t", name="c")
    added = await service.add_documents(
        tenant="t", name="c", documents=[NewDocument(TEXT, "a", {"k": 1}), NewDocument(OTHER)]
    )
    assert [d.seq for d in added] == [0, 1]
    corpus = await service.get_corpus(tenant="t", name="c")
    assert (corpus.document_count, corpus.revision) == (2, 1)
    listed = await service.list_documents(tenant="t", name="c", limit=10, offset=0)
    assert [(d.name, d.metadata, d.text) for d in listed] == [("a", {"k": 1}, ""), (None, {}, "")]
    assert (await service.get_document(tenant="t", name="c", doc_id=added[0].id)).text == TEXT
    await service.remove_document(tenant="t", name="c", doc_id=added[0].id)
    with pytest.raises(NotFoundError):
        await service.remove_document(tenant="t", name="c", doc_id=added[0].id)
    with pytest.raises(NotFoundError):
        await service.get_document(tenant="t", name="c", doc_id=added[0].id)
    corpus = await service.get_corpus(tenant="t", name="c")
    assert (corpus.document_count, corpus.revision) == (1, 2)
    added_again = await service.add_documents(tenant="t", name="c", documents=[NewDocument(TEXT, "a")])
    assert added_again[0].seq == 2  # seq never reused: "earliest" stays meaningful


async def test_failed_adds_store_nothing(database: Database) -> None:
    service = service_on(database, max_documents_per_corpus=3, max_documents_per_request=2, max_content_chars=200)
    await service.create_corpus(tenant="t", name="c")
    await service.add_documents(tenant="t", name="c", documents=[NewDocument(TEXT, "a")])
    before = await service.get_corpus(tenant="t", name="c")
    bad_batches = [
        ([NewDocument(OTHER, "b"), NewDocument(TEXT, "a")], ConflictError),  # "a" exists: whole batch refused
        ([NewDocument(OTHER, "x"), NewDocument(TEXT, "x")], InvalidInputError),  # repeated in the request
        ([NewDocument(OTHER), NewDocument("?! ...")], InvalidInputError),  # no words
        ([NewDocument(OTHER), NewDocument("word " * 100)], InvalidInputError),  # over max_content_chars
        ([NewDocument(OTHER)] * 3, LimitExceededError),  # over max_documents_per_request
        ([], InvalidInputError),
    ]
    for batch, error in bad_batches:
        with pytest.raises(error):
            await service.add_documents(tenant="t", name="c", documents=batch)
    await service.add_documents(tenant="t", name="c", documents=[NewDocument(OTHER), NewDocument(OTHER)])
    with pytest.raises(LimitExceededError):  # would make 4 > max_documents_per_corpus
        await service.add_documents(tenant="t", name="c", documents=[NewDocument(OTHER)])
    after = await service.get_corpus(tenant="t", name="c")
    assert (after.document_count, after.revision) == (3, before.revision + 1)
    assert len(await service.list_documents(tenant="t", name="c", limit=100, offset=0)) == 3
    with pytest.raises(NotFoundError):
        await service.add_documents(tenant="t", name="missing", documents=[NewDocument(TEXT)])


async def test_two_replicas_stay_in_step_through_revisions(database: Database) -> None:
    first, second = service_on(database), service_on(database)
    await first.create_corpus(tenant="t", name="c")
    [a] = await first.add_documents(tenant="t", name="c", documents=[NewDocument(TEXT, "a")])
    assert [m.doc_id for m in await second.search(tenant="t", name="c", text=TEXT, method=Method.EXACT)] == [a.id]
    [b] = await second.add_documents(tenant="t", name="c", documents=[NewDocument(TEXT.upper(), "b")])
    report = await first.duplicates(tenant="t", name="c", method=Method.EXACT)
    assert [(p["a"]["name"], p["b"]["name"]) for p in report["pairs"]] == [("a", "b")]
    await second.remove_document(tenant="t", name="c", doc_id=a.id)
    assert [m.doc_id for m in await first.search(tenant="t", name="c", text=TEXT, method=Method.EXACT)] == [b.id]
    report = await first.duplicates(tenant="t", name="c", method=Method.NEAR)
    assert report["document_count"] == 1 and report["pairs"] == []


async def test_index_rebuilds_from_stored_signatures(database: Database) -> None:
    service = service_on(database)
    await service.create_corpus(tenant="t", name="c")
    await service.add_documents(tenant="t", name="c", documents=[NewDocument(TEXT, "a"), NewDocument(TEXT + " More.", "b")])
    fresh = service_on(database)  # a restarted replica: empty cache
    report = await fresh.duplicates(tenant="t", name="c", method=Method.NEAR, threshold=0.5)
    assert report["pair_count"] == 1 and report["clusters"][0]["canonical"]["name"] == "a"
    stats = await fresh.stats()
    assert (stats["corpora"], stats["documents"], stats["cached_indexes"]) == (1, 2, 1)


class CountingEncoder:
    """The real shared encoder, counting how many texts it was asked to encode."""

    def __init__(self) -> None:
        from business_modules.redundancy.embeddings import shared_encoder

        self.inner = shared_encoder()
        self.encoded = 0

    def encode(self, texts: list[str]):  # noqa: ANN201 - numpy array
        self.encoded += len(texts)
        return self.inner.encode(texts)


@pytest.mark.slow
async def test_embeddings_are_persisted_once(database: Database) -> None:
    encoder = CountingEncoder()
    service = RedundancyService(CorpusRepository(database), Detector(RedundancySettings(), encoder))
    await service.create_corpus(tenant="t", name="c")
    await service.add_documents(
        tenant="t", name="c", documents=[NewDocument("The cat sat on the mat."), NewDocument("A cat was sitting on the rug.")]
    )
    report = await service.duplicates(tenant="t", name="c", method=Method.SEMANTIC, threshold=0.6)
    assert report["pair_count"] == 1 and encoder.encoded == 2
    rows = await database.fetch_all("SELECT embedding FROM redundancy_documents")
    assert all(r["embedding"] is not None and len(bytes(r["embedding"])) == 384 * 4 for r in rows)
    restarted = RedundancyService(CorpusRepository(database), Detector(RedundancySettings(), encoder))
    again = await restarted.duplicates(tenant="t", name="c", method=Method.SEMANTIC, threshold=0.6)
    assert again["pairs"][0]["score"] == pytest.approx(report["pairs"][0]["score"], abs=1e-6)
    assert encoder.encoded == 2  # nothing re-embedded after the "restart"
