"""SQL of the generations table (``gamma_generations``) over the storage `Database`.

Same discipline as Export's jobs: every state change is a conditional UPDATE
(compare-and-set on ``status`` and, for the worker's writes, ``attempt_id``),
so a worker that lost its job to the stale-lease sweeper can never mark it
completed. A row is inserted whole (validated request, plan) or not at all.
Timestamps are epoch seconds; JSON is TEXT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from business_modules.gamma.kinds import JobStatus
from business_modules.storage import Database, Migration, register_migrations

register_migrations(
    "gamma",
    [
        Migration(
            1,
            "gamma generations",
            """
            CREATE TABLE IF NOT EXISTS gamma_generations (
                id TEXT PRIMARY KEY,
                owner TEXT,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                format TEXT NOT NULL,
                text_mode TEXT NOT NULL,
                theme TEXT NOT NULL,
                request_json TEXT NOT NULL,
                plan_json TEXT NOT NULL,
                title TEXT,
                deck_json TEXT,
                html TEXT,
                quality_score DOUBLE PRECISION,
                quality_json TEXT,
                usage_json TEXT,
                error TEXT,
                runner_id TEXT,
                attempt_id TEXT,
                lease_until DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                expires_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS gamma_generations_status_lease ON gamma_generations (status, lease_until);
            CREATE INDEX IF NOT EXISTS gamma_generations_expires ON gamma_generations (expires_at);
            """,
        )
    ],
)

_COLUMNS = (
    "id, owner, kind, status, format, text_mode, theme, plan_json, title, deck_json, html, quality_score,"
    " quality_json, usage_json, error, runner_id, attempt_id, lease_until, created_at, updated_at, started_at,"
    " finished_at, expires_at"
)


@dataclass(frozen=True, slots=True)
class GenerationRow:
    """One row of ``gamma_generations`` (without the stored request)."""

    id: str
    owner: str | None
    kind: str
    status: JobStatus
    format: str
    text_mode: str
    theme: str
    plan_json: str
    created_at: float
    updated_at: float
    title: str | None = None
    deck_json: str | None = None
    html: str | None = None
    quality_score: float | None = None
    quality_json: str | None = None
    usage_json: str | None = None
    error: str | None = None
    runner_id: str | None = None
    attempt_id: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None

    @property
    def quality(self) -> dict[str, Any]:
        return json.loads(self.quality_json) if self.quality_json else {}

    @property
    def usage(self) -> dict[str, int]:
        return json.loads(self.usage_json) if self.usage_json else {}


def _row(row: dict[str, Any]) -> GenerationRow:
    data = dict(row)
    data["status"] = JobStatus(data["status"])
    return GenerationRow(**data)


async def insert(db: Database, row: GenerationRow, *, request_json: str) -> None:
    await db.execute(
        "INSERT INTO gamma_generations (id, owner, kind, status, format, text_mode, theme, request_json, plan_json,"
        " runner_id, lease_until, created_at, updated_at)"
        " VALUES (:id, :owner, :kind, :status, :format, :text_mode, :theme, :request_json, :plan_json,"
        " :runner_id, :lease_until, :created_at, :updated_at)",
        {"id": row.id, "owner": row.owner, "kind": row.kind, "status": row.status.value, "format": row.format,
         "text_mode": row.text_mode, "theme": row.theme, "request_json": request_json, "plan_json": row.plan_json,
         "runner_id": row.runner_id, "lease_until": row.lease_until, "created_at": row.created_at,
         "updated_at": row.updated_at},
    )


async def get(db: Database, generation_id: str) -> GenerationRow | None:
    row = await db.fetch_one(f"SELECT {_COLUMNS} FROM gamma_generations WHERE id = :id", {"id": generation_id})
    return None if row is None else _row(row)


async def claim(db: Database, generation_id: str, *, runner_id: str, attempt_id: str, now: float,
                lease_until: float) -> bool:
    """queued -> running, only for the replica that queued it."""
    return await db.execute(
        "UPDATE gamma_generations SET status = 'running', attempt_id = :attempt_id, started_at = :now,"
        " updated_at = :now, lease_until = :lease_until"
        " WHERE id = :id AND status = 'queued' AND runner_id = :runner_id",
        {"id": generation_id, "runner_id": runner_id, "attempt_id": attempt_id, "now": now,
         "lease_until": lease_until},
    ) == 1


async def complete(db: Database, generation_id: str, *, attempt_id: str, now: float, expires_at: float, title: str,
                   deck_json: str, html: str, quality_score: float, quality_json: str, usage_json: str) -> bool:
    """running -> completed, only for the attempt that still owns the generation."""
    return await db.execute(
        "UPDATE gamma_generations SET status = 'completed', title = :title, deck_json = :deck_json, html = :html,"
        " quality_score = :quality_score, quality_json = :quality_json, usage_json = :usage_json,"
        " finished_at = :now, updated_at = :now, expires_at = :expires_at, lease_until = NULL"
        " WHERE id = :id AND status = 'running' AND attempt_id = :attempt_id",
        {"id": generation_id, "attempt_id": attempt_id, "now": now, "expires_at": expires_at, "title": title,
         "deck_json": deck_json, "html": html, "quality_score": quality_score, "quality_json": quality_json,
         "usage_json": usage_json},
    ) == 1


async def fail(db: Database, generation_id: str, *, error: str, now: float, expires_at: float,
               attempt_id: str | None = None, usage_json: str | None = None) -> bool:
    """queued/running -> failed (for ``attempt_id`` only, when given)."""
    sql = (
        "UPDATE gamma_generations SET status = 'failed', error = :error, usage_json = :usage_json,"
        " finished_at = :now, updated_at = :now, expires_at = :expires_at, lease_until = NULL"
        " WHERE id = :id AND status IN ('queued', 'running')"
    )
    params: dict[str, Any] = {"id": generation_id, "error": error[:2000], "now": now, "expires_at": expires_at,
                              "usage_json": usage_json}
    if attempt_id is not None:
        sql += " AND attempt_id = :attempt_id"
        params["attempt_id"] = attempt_id
    return await db.execute(sql, params) == 1


async def renew_leases(db: Database, *, runner_id: str, lease_until: float) -> int:
    return await db.execute(
        "UPDATE gamma_generations SET lease_until = :lease_until"
        " WHERE runner_id = :runner_id AND status IN ('queued', 'running')",
        {"runner_id": runner_id, "lease_until": lease_until},
    )


async def fail_stale(db: Database, *, now: float, error: str, expires_at: float) -> int:
    """Fail unfinished generations whose lease ran out: the replica that owned them is gone."""
    return await db.execute(
        "UPDATE gamma_generations SET status = 'failed', error = :error, finished_at = :now, updated_at = :now,"
        " expires_at = :expires_at, lease_until = NULL"
        " WHERE status IN ('queued', 'running') AND lease_until < :now",
        {"now": now, "error": error, "expires_at": expires_at},
    )


async def purge_expired(db: Database, *, now: float) -> int:
    return await db.execute(
        "DELETE FROM gamma_generations WHERE expires_at IS NOT NULL AND expires_at < :now", {"now": now})


async def count(db: Database) -> int:
    return int(await db.fetch_value("SELECT COUNT(*) FROM gamma_generations"))
