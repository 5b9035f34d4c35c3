"""Corpora and their documents, persisted through the storage API.

Every change of a corpus' documents runs in one transaction that also bumps
the corpus `revision`; an in-memory index compares revisions to know it must
resync, so replicas never serve a stale index for long and a failed request
leaves neither half-written rows nor a bumped revision.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from business_modules.redundancy.errors import ConflictError, LimitExceededError, NotFoundError
from business_modules.redundancy.models import CorpusRecord, DocumentRecord
from business_modules.storage import Database, IntegrityError, Migration, register_migrations

register_migrations(
    "redundancy",
    [
        Migration(
            1,
            "corpora",
            "CREATE TABLE IF NOT EXISTS redundancy_corpora ("
            " id TEXT PRIMARY KEY,"
            " tenant TEXT NOT NULL,"
            " name TEXT NOT NULL,"
            " description TEXT NOT NULL DEFAULT '',"
            " created_at TEXT NOT NULL,"
            " updated_at TEXT NOT NULL,"
            " revision BIGINT NOT NULL DEFAULT 0,"
            " next_seq BIGINT NOT NULL DEFAULT 0,"
            " document_count INTEGER NOT NULL DEFAULT 0,"
            " UNIQUE (tenant, name))",
        ),
        Migration(
            2,
            "documents",
            {
                dialect: "CREATE TABLE IF NOT EXISTS redundancy_documents ("
                " id TEXT PRIMARY KEY,"
                " corpus_id TEXT NOT NULL REFERENCES redundancy_corpora(id) ON DELETE CASCADE,"
                " seq BIGINT NOT NULL,"
                " name TEXT,"
                " text TEXT NOT NULL,"
                " content_hash TEXT NOT NULL,"
                " word_count INTEGER NOT NULL,"
                " char_count INTEGER NOT NULL,"
                " metadata TEXT NOT NULL DEFAULT '{}',"
                f" minhash {blob} NOT NULL,"
                f" embedding {blob},"
                " created_at TEXT NOT NULL,"
                " UNIQUE (corpus_id, seq),"
                " UNIQUE (corpus_id, name));"
                " CREATE INDEX IF NOT EXISTS redundancy_documents_hash"
                " ON redundancy_documents (corpus_id, content_hash)"
                for dialect, blob in (("postgresql", "BYTEA"), ("sqlite", "BLOB"))
            },
        ),
    ],
)

_CORPUS_COLUMNS = "id, tenant, name, description, created_at, updated_at, revision, document_count"
_SUMMARY_COLUMNS = "id, corpus_id, seq, name, content_hash, word_count, char_count, metadata, created_at"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _corpus(row: dict[str, Any]) -> CorpusRecord:
    return CorpusRecord(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        description=row["description"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revision=int(row["revision"]),
        document_count=int(row["document_count"]),
    )


def _document(row: dict[str, Any]) -> DocumentRecord:
    return DocumentRecord(
        id=row["id"],
        corpus_id=row["corpus_id"],
        seq=int(row["seq"]),
        name=row["name"],
        text=row.get("text", ""),
        content_hash=row["content_hash"],
        word_count=int(row["word_count"]),
        char_count=int(row["char_count"]),
        metadata=json.loads(row["metadata"]),
        created_at=row["created_at"],
    )


class StoredDocument:
    """A document row as the index needs it: record, MinHash blob, embedding blob."""

    __slots__ = ("record", "minhash", "embedding")

    def __init__(self, record: DocumentRecord, minhash: bytes, embedding: bytes | None) -> None:
        self.record = record
        self.minhash = minhash
        self.embedding = embedding


class PreparedDocument:
    """A validated document ready to insert (features already computed)."""

    __slots__ = ("text", "name", "metadata", "content_hash", "word_count", "minhash")

    def __init__(
        self, *, text: str, name: str | None, metadata: dict[str, Any], content_hash: str, word_count: int, minhash: bytes
    ) -> None:
        self.text = text
        self.name = name
        self.metadata = metadata
        self.content_hash = content_hash
        self.word_count = word_count
        self.minhash = minhash


class CorpusRepository:
    """CRUD of corpora and documents for one tenant at a time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_corpus(self, *, tenant: str, name: str, description: str = "") -> CorpusRecord:
        """A new empty corpus; raises ConflictError when the name is taken."""
        now = _now()
        params = {"id": uuid.uuid4().hex, "tenant": tenant, "name": name, "description": description, "now": now}
        try:
            await self.db.execute(
                "INSERT INTO redundancy_corpora (id, tenant, name, description, created_at, updated_at)"
                " VALUES (:id, :tenant, :name, :description, :now, :now)",
                params,
            )
        except IntegrityError as exc:
            raise ConflictError(f"corpus {name!r} already exists") from exc
        return await self.get_corpus(tenant=tenant, name=name)

    async def get_corpus(self, *, tenant: str, name: str) -> CorpusRecord:
        """The corpus named `name`; raises NotFoundError."""
        row = await self.db.fetch_one(
            f"SELECT {_CORPUS_COLUMNS} FROM redundancy_corpora WHERE tenant = :tenant AND name = :name",
            {"tenant": tenant, "name": name},
        )
        if row is None:
            raise NotFoundError(f"corpus {name!r} not found")
        return _corpus(row)

    async def list_corpora(self, *, tenant: str, limit: int = 100, offset: int = 0) -> list[CorpusRecord]:
        """Corpora of `tenant` by name."""
        rows = await self.db.fetch_all(
            f"SELECT {_CORPUS_COLUMNS} FROM redundancy_corpora WHERE tenant = :tenant"
            " ORDER BY name LIMIT :limit OFFSET :offset",
            {"tenant": tenant, "limit": limit, "offset": offset},
        )
        return [_corpus(r) for r in rows]

    async def delete_corpus(self, corpus: CorpusRecord) -> None:
        """Delete a corpus and all its documents (in one transaction)."""
        async with self.db.transaction():
            await self.db.execute("DELETE FROM redundancy_documents WHERE corpus_id = :id", {"id": corpus.id})
            await self.db.execute("DELETE FROM redundancy_corpora WHERE id = :id", {"id": corpus.id})

    async def add_documents(
        self, corpus: CorpusRecord, documents: Sequence[PreparedDocument], *, max_documents: int
    ) -> list[DocumentRecord]:
        """Insert `documents` all or none; raises ConflictError (name taken), LimitExceededError.

        The corpus row is updated first, which takes its row lock on
        PostgreSQL (SQLite serialises writers), so concurrent adds get
        distinct `seq` ranges and a consistent count.
        """
        now = _now()
        count = len(documents)
        async with self.db.transaction():
            changed = await self.db.execute(
                "UPDATE redundancy_corpora SET revision = revision + 1, next_seq = next_seq + :n,"
                " document_count = document_count + :n, updated_at = :now WHERE id = :id",
                {"n": count, "now": now, "id": corpus.id},
            )
            if not changed:
                raise NotFoundError(f"corpus {corpus.name!r} not found")
            row = await self.db.fetch_one(
                "SELECT next_seq, document_count FROM redundancy_corpora WHERE id = :id", {"id": corpus.id}
            )
            if int(row["document_count"]) > max_documents:
                raise LimitExceededError(
                    f"corpus {corpus.name!r} would hold {row['document_count']} documents; the limit is {max_documents}"
                )
            first_seq = int(row["next_seq"]) - count
            records = [
                DocumentRecord(
                    id=uuid.uuid4().hex,
                    corpus_id=corpus.id,
                    seq=first_seq + i,
                    name=doc.name,
                    text=doc.text,
                    content_hash=doc.content_hash,
                    word_count=doc.word_count,
                    char_count=len(doc.text),
                    metadata=doc.metadata,
                    created_at=now,
                )
                for i, doc in enumerate(documents)
            ]
            try:
                await self.db.execute_many(
                    "INSERT INTO redundancy_documents (id, corpus_id, seq, name, text, content_hash,"
                    " word_count, char_count, metadata, minhash, created_at) VALUES (:id, :corpus_id, :seq,"
                    " :name, :text, :content_hash, :word_count, :char_count, :metadata, :minhash, :created_at)",
                    [
                        {
                            "id": r.id,
                            "corpus_id": r.corpus_id,
                            "seq": r.seq,
                            "name": r.name,
                            "text": r.text,
                            "content_hash": r.content_hash,
                            "word_count": r.word_count,
                            "char_count": r.char_count,
                            "metadata": json.dumps(r.metadata),
                            "minhash": doc.minhash,
                            "created_at": r.created_at,
                        }
                        for r, doc in zip(records, documents, strict=True)
                    ],
                )
            except IntegrityError as exc:
                raise ConflictError("a document name is already used in this corpus (or repeated in the request)") from exc
        return records

    async def remove_document(self, corpus: CorpusRecord, doc_id: str) -> None:
        """Delete one document; raises NotFoundError."""
        async with self.db.transaction():
            deleted = await self.db.execute(
                "DELETE FROM redundancy_documents WHERE corpus_id = :corpus_id AND id = :id",
                {"corpus_id": corpus.id, "id": doc_id},
            )
            if not deleted:
                raise NotFoundError(f"document {doc_id!r} not found in corpus {corpus.name!r}")
            await self.db.execute(
                "UPDATE redundancy_corpora SET revision = revision + 1, document_count = document_count - 1,"
                " updated_at = :now WHERE id = :id",
                {"now": _now(), "id": corpus.id},
            )

    async def get_document(self, corpus: CorpusRecord, doc_id: str) -> DocumentRecord:
        """One document with its text; raises NotFoundError."""
        row = await self.db.fetch_one(
            f"SELECT {_SUMMARY_COLUMNS}, text FROM redundancy_documents WHERE corpus_id = :corpus_id AND id = :id",
            {"corpus_id": corpus.id, "id": doc_id},
        )
        if row is None:
            raise NotFoundError(f"document {doc_id!r} not found in corpus {corpus.name!r}")
        return _document(row)

    async def list_documents(self, corpus: CorpusRecord, *, limit: int = 100, offset: int = 0) -> list[DocumentRecord]:
        """Documents in the order they were added, without their text."""
        rows = await self.db.fetch_all(
            f"SELECT {_SUMMARY_COLUMNS} FROM redundancy_documents WHERE corpus_id = :corpus_id"
            " ORDER BY seq LIMIT :limit OFFSET :offset",
            {"corpus_id": corpus.id, "limit": limit, "offset": offset},
        )
        return [_document(r) for r in rows]

    async def document_ids(self, corpus_id: str) -> set[str]:
        """Ids of every document of a corpus (to diff against an index)."""
        rows = await self.db.fetch_all(
            "SELECT id FROM redundancy_documents WHERE corpus_id = :corpus_id", {"corpus_id": corpus_id}
        )
        return {r["id"] for r in rows}

    async def stored_documents(self, corpus_id: str, ids: Sequence[str] | None = None) -> list[StoredDocument]:
        """Full rows (text, signature, embedding) of a corpus, or of `ids` in it."""
        sql = (
            f"SELECT {_SUMMARY_COLUMNS}, text, minhash, embedding FROM redundancy_documents"
            " WHERE corpus_id = :corpus_id"
        )
        params: dict[str, Any] = {"corpus_id": corpus_id}
        if ids is not None:
            if not ids:
                return []
            names = [f"id{i}" for i in range(len(ids))]
            sql += f" AND id IN ({', '.join(':' + n for n in names)})"
            params.update(zip(names, ids, strict=True))
        rows = await self.db.fetch_all(sql + " ORDER BY seq", params)
        return [
            StoredDocument(_document(r), bytes(r["minhash"]), bytes(r["embedding"]) if r["embedding"] else None)
            for r in rows
        ]

    async def save_embeddings(self, corpus_id: str, embeddings: dict[str, bytes]) -> None:
        """Store computed embeddings (a document deleted meanwhile is skipped)."""
        if not embeddings:
            return
        await self.db.execute_many(
            "UPDATE redundancy_documents SET embedding = :embedding WHERE corpus_id = :corpus_id AND id = :id",
            [{"embedding": blob, "corpus_id": corpus_id, "id": doc_id} for doc_id, blob in embeddings.items()],
        )

    async def count_corpora(self) -> tuple[int, int]:
        """(corpora, documents) over all tenants, for /stats."""
        row = await self.db.fetch_one(
            "SELECT COUNT(*) AS corpora, COALESCE(SUM(document_count), 0) AS documents FROM redundancy_corpora"
        )
        return int(row["corpora"]), int(row["documents"])
