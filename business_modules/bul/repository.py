"""SQL of BUL's tables over the storage `Database`.

- ``bul_documents``: one per generation request (owner, type, title, the
  validated request, the outline once known, the current version);
- ``bul_versions``: every version of a document, kept (sections as JSON and
  the assembled Markdown);
- ``bul_tasks``: the jobs (generate or regenerate one section) with their
  status, progress per section (JSON), lease and attempt.

Like Export's jobs, every state change of a task is a compare-and-set on
``status`` (and, for the worker's writes, ``attempt_id``), so a worker whose
task was cancelled or taken by the stale-lease sweeper can never write
progress or a version for it. A version is stored in the same transaction as
the task's completion: no task completes without its version, and no version
exists without its completed task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from business_modules.bul.models import TaskKind, TaskStatus
from business_modules.storage import Database, Migration, register_migrations

register_migrations(
    "bul",
    [
        Migration(
            1,
            "bul documents, versions and tasks",
            """
            CREATE TABLE IF NOT EXISTS bul_documents (
                id TEXT PRIMARY KEY,
                owner TEXT,
                document_type TEXT NOT NULL,
                title TEXT NOT NULL,
                request_json TEXT NOT NULL,
                outline_json TEXT,
                current_version INTEGER NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            );
            CREATE TABLE IF NOT EXISTS bul_versions (
                document_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                task_id TEXT NOT NULL,
                sections_json TEXT NOT NULL,
                markdown TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (document_id, version)
            );
            CREATE TABLE IF NOT EXISTS bul_tasks (
                id TEXT PRIMARY KEY,
                document_id TEXT NOT NULL,
                owner TEXT,
                kind TEXT NOT NULL,
                section_index INTEGER,
                request_json TEXT NOT NULL,
                status TEXT NOT NULL,
                priority INTEGER NOT NULL,
                error TEXT,
                progress_json TEXT NOT NULL,
                version INTEGER,
                runner_id TEXT,
                attempt_id TEXT,
                lease_until DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS bul_tasks_status_lease ON bul_tasks (status, lease_until);
            CREATE INDEX IF NOT EXISTS bul_tasks_document ON bul_tasks (document_id);
            """,
        )
    ],
)

_TASK_COLUMNS = ("id, document_id, owner, kind, section_index, request_json, status, priority, error, progress_json,"
                 " version, runner_id, attempt_id, lease_until, created_at, updated_at, started_at, finished_at")
_DOC_COLUMNS = "id, owner, document_type, title, request_json, outline_json, current_version, created_at, updated_at"


@dataclass(frozen=True, slots=True)
class Task:
    """One row of ``bul_tasks``; ``progress`` is the per-section list."""

    id: str
    document_id: str
    owner: str | None
    kind: TaskKind
    section_index: int | None
    request_json: str
    status: TaskStatus
    priority: int
    progress: list[dict[str, Any]]
    created_at: float
    updated_at: float
    error: str | None = None
    version: int | None = None
    runner_id: str | None = None
    attempt_id: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    owner: str | None
    document_type: str
    title: str
    request_json: str
    outline: dict[str, str] | None
    current_version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Version:
    document_id: str
    version: int
    task_id: str
    sections: list[dict[str, str]]
    markdown: str
    created_at: float


def _task(row: dict[str, Any]) -> Task:
    data = dict(row)
    data["kind"] = TaskKind(data["kind"])
    data["status"] = TaskStatus(data["status"])
    data["progress"] = json.loads(data.pop("progress_json"))
    for key in ("section_index", "version", "priority"):
        if data.get(key) is not None:
            data[key] = int(data[key])
    return Task(**data)


def _document(row: dict[str, Any]) -> Document:
    data = dict(row)
    outline = data.pop("outline_json")
    data["outline"] = json.loads(outline) if outline else None
    data["current_version"] = int(data["current_version"])
    return Document(**data)


async def insert_document(db: Database, document: Document) -> None:
    await db.execute(
        "INSERT INTO bul_documents (id, owner, document_type, title, request_json, current_version, created_at,"
        " updated_at) VALUES (:id, :owner, :document_type, :title, :request_json, 0, :now, :now)",
        {"id": document.id, "owner": document.owner, "document_type": document.document_type,
         "title": document.title, "request_json": document.request_json, "now": document.created_at},
    )


async def insert_task(db: Database, task: Task) -> None:
    await db.execute(
        "INSERT INTO bul_tasks (id, document_id, owner, kind, section_index, request_json, status, priority,"
        " progress_json, runner_id, lease_until, created_at, updated_at)"
        " VALUES (:id, :document_id, :owner, :kind, :section_index, :request_json, :status, :priority,"
        " :progress_json, :runner_id, :lease_until, :created_at, :updated_at)",
        {"id": task.id, "document_id": task.document_id, "owner": task.owner, "kind": task.kind.value,
         "section_index": task.section_index, "request_json": task.request_json, "status": task.status.value,
         "priority": task.priority, "progress_json": json.dumps(task.progress), "runner_id": task.runner_id,
         "lease_until": task.lease_until, "created_at": task.created_at, "updated_at": task.updated_at},
    )


async def get_task(db: Database, task_id: str) -> Task | None:
    row = await db.fetch_one(f"SELECT {_TASK_COLUMNS} FROM bul_tasks WHERE id = :id", {"id": task_id})
    return None if row is None else _task(row)


async def tasks_of(db: Database, document_id: str) -> list[Task]:
    rows = await db.fetch_all(f"SELECT {_TASK_COLUMNS} FROM bul_tasks WHERE document_id = :id ORDER BY created_at",
                              {"id": document_id})
    return [_task(row) for row in rows]


async def get_document(db: Database, document_id: str) -> Document | None:
    row = await db.fetch_one(f"SELECT {_DOC_COLUMNS} FROM bul_documents WHERE id = :id", {"id": document_id})
    return None if row is None else _document(row)


async def versions_of(db: Database, document_id: str) -> list[Version]:
    rows = await db.fetch_all(
        "SELECT document_id, version, task_id, sections_json, markdown, created_at FROM bul_versions"
        " WHERE document_id = :id ORDER BY version", {"id": document_id})
    return [Version(document_id=r["document_id"], version=int(r["version"]), task_id=r["task_id"],
                    sections=json.loads(r["sections_json"]), markdown=r["markdown"], created_at=r["created_at"])
            for r in rows]


async def claim(db: Database, task_id: str, *, runner_id: str, attempt_id: str, now: float,
                lease_until: float) -> bool:
    """queued -> running, only for the replica that queued it."""
    return await db.execute(
        "UPDATE bul_tasks SET status = 'running', attempt_id = :attempt_id, started_at = :now, updated_at = :now,"
        " lease_until = :lease_until WHERE id = :id AND status = 'queued' AND runner_id = :runner_id",
        {"id": task_id, "runner_id": runner_id, "attempt_id": attempt_id, "now": now, "lease_until": lease_until},
    ) == 1


async def save_progress(db: Database, task_id: str, *, attempt_id: str, progress: list[dict[str, Any]],
                        now: float) -> bool:
    """Record per-section progress; False when the task is no longer this attempt's running task."""
    return await db.execute(
        "UPDATE bul_tasks SET progress_json = :progress, updated_at = :now"
        " WHERE id = :id AND status = 'running' AND attempt_id = :attempt_id",
        {"id": task_id, "attempt_id": attempt_id, "progress": json.dumps(progress), "now": now},
    ) == 1


async def save_outline(db: Database, document_id: str, outline: dict[str, str], *, now: float) -> None:
    await db.execute("UPDATE bul_documents SET outline_json = :outline, updated_at = :now WHERE id = :id",
                     {"id": document_id, "outline": json.dumps(outline), "now": now})


async def complete_with_version(db: Database, task: Task, *, attempt_id: str,
                                sections: list[dict[str, str]], markdown: str, progress: list[dict[str, Any]],
                                now: float) -> int | None:
    """running -> completed and the next version, together; the version number, or None (nothing written)
    when the task was lost (cancelled, or failed by the lease sweeper)."""
    async with db.transaction():
        # Lock the document's row first: two regenerations finishing together then take turns, and the
        # second reads the first's committed version (PostgreSQL's read committed; SQLite has one writer).
        await db.execute("UPDATE bul_documents SET updated_at = :now WHERE id = :id",
                         {"id": task.document_id, "now": now})
        version = await next_version(db, task.document_id)
        won = await db.execute(
            "UPDATE bul_tasks SET status = 'completed', version = :version, progress_json = :progress,"
            " finished_at = :now, updated_at = :now, lease_until = NULL"
            " WHERE id = :id AND status = 'running' AND attempt_id = :attempt_id",
            {"id": task.id, "attempt_id": attempt_id, "version": version, "progress": json.dumps(progress),
             "now": now},
        ) == 1
        if not won:
            return None
        await db.execute(
            "INSERT INTO bul_versions (document_id, version, task_id, sections_json, markdown, created_at)"
            " VALUES (:document_id, :version, :task_id, :sections, :markdown, :now)",
            {"document_id": task.document_id, "version": version, "task_id": task.id,
             "sections": json.dumps(sections), "markdown": markdown, "now": now},
        )
        await db.execute(
            "UPDATE bul_documents SET current_version = :version, updated_at = :now"
            " WHERE id = :id AND current_version < :version",
            {"id": task.document_id, "version": version, "now": now},
        )
    return version


async def next_version(db: Database, document_id: str) -> int:
    value = await db.fetch_value("SELECT MAX(version) FROM bul_versions WHERE document_id = :id",
                                 {"id": document_id})
    return int(value or 0) + 1


async def fail(db: Database, task_id: str, *, error: str, now: float, attempt_id: str | None = None) -> bool:
    """queued/running -> failed (for ``attempt_id`` only, when given)."""
    sql = ("UPDATE bul_tasks SET status = 'failed', error = :error, finished_at = :now, updated_at = :now,"
           " lease_until = NULL WHERE id = :id AND status IN ('queued', 'running')")
    params: dict[str, Any] = {"id": task_id, "error": error[:2000], "now": now}
    if attempt_id is not None:
        sql += " AND attempt_id = :attempt_id"
        params["attempt_id"] = attempt_id
    return await db.execute(sql, params) == 1


async def cancel(db: Database, task_id: str, *, now: float) -> bool:
    """queued/running -> cancelled."""
    return await db.execute(
        "UPDATE bul_tasks SET status = 'cancelled', error = 'cancelled by the caller', finished_at = :now,"
        " updated_at = :now, lease_until = NULL WHERE id = :id AND status IN ('queued', 'running')",
        {"id": task_id, "now": now},
    ) == 1


async def renew_leases(db: Database, *, runner_id: str, lease_until: float) -> int:
    return await db.execute(
        "UPDATE bul_tasks SET lease_until = :lease_until"
        " WHERE runner_id = :runner_id AND status IN ('queued', 'running')",
        {"runner_id": runner_id, "lease_until": lease_until},
    )


async def fail_stale(db: Database, *, now: float, error: str) -> int:
    """Fail unfinished tasks whose lease ran out: the replica that owned them is gone."""
    return await db.execute(
        "UPDATE bul_tasks SET status = 'failed', error = :error, finished_at = :now, updated_at = :now,"
        " lease_until = NULL WHERE status IN ('queued', 'running') AND lease_until < :now",
        {"now": now, "error": error},
    )
