"""SQL of the export job table (``export_jobs``) over the storage `Database`.

Every state change is a conditional UPDATE (compare-and-set on ``status``
and, for the worker's own writes, ``attempt_id``) whose row count says
whether it won, so a worker that lost its job to the stale-lease sweeper can
never mark it completed, and two replicas can never run the same job.
Timestamps are epoch seconds; ``quality_issues`` is JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from business_modules.export.kinds import JobStatus
from business_modules.storage import Database, Migration, register_migrations

register_migrations(
    "export",
    [
        Migration(
            1,
            "export jobs",
            """
            CREATE TABLE IF NOT EXISTS export_jobs (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                format TEXT NOT NULL,
                document_type TEXT NOT NULL,
                quality_level TEXT NOT NULL,
                title TEXT NOT NULL,
                owner TEXT,
                request_json TEXT NOT NULL,
                error TEXT,
                quality_score DOUBLE PRECISION,
                quality_issues TEXT,
                filename TEXT,
                media_type TEXT,
                result_name TEXT,
                size_bytes BIGINT,
                runner_id TEXT,
                attempt_id TEXT,
                lease_until DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                expires_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS export_jobs_status_lease ON export_jobs (status, lease_until);
            CREATE INDEX IF NOT EXISTS export_jobs_expires ON export_jobs (expires_at);
            """,
        )
    ],
)

_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

_COLUMNS = (
    "id, status, format, document_type, quality_level, title, owner, error, quality_score, quality_issues,"
    " filename, media_type, result_name, size_bytes, runner_id, attempt_id, lease_until, created_at,"
    " updated_at, started_at, finished_at, expires_at"
)


@dataclass(frozen=True, slots=True)
class ExportJob:
    """One row of ``export_jobs`` (without the stored request)."""

    id: str
    status: JobStatus
    format: str
    document_type: str
    quality_level: str
    title: str
    owner: str | None
    created_at: float
    updated_at: float
    error: str | None = None
    quality_score: float | None = None
    quality_issues: tuple[str, ...] = ()
    filename: str | None = None
    media_type: str | None = None
    result_name: str | None = None
    size_bytes: int | None = None
    runner_id: str | None = None
    attempt_id: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None


def _job(row: dict[str, Any]) -> ExportJob:
    data = dict(row)
    data["status"] = JobStatus(data["status"])
    data["quality_issues"] = tuple(json.loads(data["quality_issues"])) if data.get("quality_issues") else ()
    if data.get("size_bytes") is not None:
        data["size_bytes"] = int(data["size_bytes"])
    return ExportJob(**data)


async def insert_job(db: Database, job: ExportJob, *, request_json: str) -> None:
    await db.execute(
        "INSERT INTO export_jobs (id, status, format, document_type, quality_level, title, owner, request_json,"
        " runner_id, lease_until, created_at, updated_at)"
        " VALUES (:id, :status, :format, :document_type, :quality_level, :title, :owner, :request_json,"
        " :runner_id, :lease_until, :created_at, :updated_at)",
        {
            "id": job.id,
            "status": job.status.value,
            "format": job.format,
            "document_type": job.document_type,
            "quality_level": job.quality_level,
            "title": job.title,
            "owner": job.owner,
            "request_json": request_json,
            "runner_id": job.runner_id,
            "lease_until": job.lease_until,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        },
    )


async def get_job(db: Database, job_id: str) -> ExportJob | None:
    row = await db.fetch_one(f"SELECT {_COLUMNS} FROM export_jobs WHERE id = :id", {"id": job_id})
    return None if row is None else _job(row)


async def get_request_json(db: Database, job_id: str) -> str | None:
    return await db.fetch_value("SELECT request_json FROM export_jobs WHERE id = :id", {"id": job_id})


async def claim(db: Database, job_id: str, *, runner_id: str, attempt_id: str, now: float, lease_until: float) -> bool:
    """queued -> running, only for the replica that queued it."""
    changed = await db.execute(
        "UPDATE export_jobs SET status = 'running', attempt_id = :attempt_id, started_at = :now,"
        " updated_at = :now, lease_until = :lease_until"
        " WHERE id = :id AND status = 'queued' AND runner_id = :runner_id",
        {"id": job_id, "runner_id": runner_id, "attempt_id": attempt_id, "now": now, "lease_until": lease_until},
    )
    return changed == 1


async def complete(
    db: Database,
    job_id: str,
    *,
    attempt_id: str,
    now: float,
    expires_at: float,
    result_name: str,
    filename: str,
    media_type: str,
    size_bytes: int,
    quality_score: float,
    quality_issues: list[str],
) -> bool:
    """running -> completed, only for the attempt that still owns the job."""
    changed = await db.execute(
        "UPDATE export_jobs SET status = 'completed', result_name = :result_name, filename = :filename,"
        " media_type = :media_type, size_bytes = :size_bytes, quality_score = :quality_score,"
        " quality_issues = :quality_issues, finished_at = :now, updated_at = :now, expires_at = :expires_at,"
        " lease_until = NULL"
        " WHERE id = :id AND status = 'running' AND attempt_id = :attempt_id",
        {
            "id": job_id,
            "attempt_id": attempt_id,
            "now": now,
            "expires_at": expires_at,
            "result_name": result_name,
            "filename": filename,
            "media_type": media_type,
            "size_bytes": size_bytes,
            "quality_score": quality_score,
            "quality_issues": json.dumps(quality_issues),
        },
    )
    return changed == 1


async def fail(db: Database, job_id: str, *, error: str, now: float, expires_at: float,
               attempt_id: str | None = None) -> bool:
    """queued/running -> failed (for ``attempt_id`` only, when given)."""
    sql = (
        "UPDATE export_jobs SET status = 'failed', error = :error, finished_at = :now, updated_at = :now,"
        " expires_at = :expires_at, lease_until = NULL"
        " WHERE id = :id AND status IN ('queued', 'running')"
    )
    params: dict[str, Any] = {"id": job_id, "error": error[:2000], "now": now, "expires_at": expires_at}
    if attempt_id is not None:
        sql += " AND attempt_id = :attempt_id"
        params["attempt_id"] = attempt_id
    return await db.execute(sql, params) == 1


async def renew_leases(db: Database, *, runner_id: str, now: float, lease_until: float) -> int:
    """Extend the leases of every unfinished job this replica owns."""
    return await db.execute(
        "UPDATE export_jobs SET lease_until = :lease_until"
        " WHERE runner_id = :runner_id AND status IN ('queued', 'running')",
        {"runner_id": runner_id, "lease_until": lease_until},
    )


async def fail_stale(db: Database, *, now: float, error: str, expires_at: float) -> int:
    """Fail unfinished jobs whose lease ran out: the replica that owned them is gone."""
    return await db.execute(
        "UPDATE export_jobs SET status = 'failed', error = :error, finished_at = :now, updated_at = :now,"
        " expires_at = :expires_at, lease_until = NULL"
        " WHERE status IN ('queued', 'running') AND lease_until < :now",
        {"now": now, "error": error, "expires_at": expires_at},
    )


async def list_expired(db: Database, *, now: float, limit: int = 100) -> list[ExportJob]:
    rows = await db.fetch_all(
        f"SELECT {_COLUMNS} FROM export_jobs WHERE expires_at IS NOT NULL AND expires_at < :now"
        " ORDER BY expires_at LIMIT :limit",
        {"now": now, "limit": limit},
    )
    return [_job(row) for row in rows]


async def delete_job(db: Database, job_id: str) -> int:
    return await db.execute("DELETE FROM export_jobs WHERE id = :id", {"id": job_id})
