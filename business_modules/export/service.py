"""Export jobs: submit, run in the background, report truthfully, hand out results.

Lifecycle: ``queued`` (stored, waiting for a render slot in this replica) ->
``running`` -> ``completed`` (file on disk, row updated) or ``failed`` (error
message kept). A job belongs to the replica that accepted it (``runner_id``)
and carries a lease that replica renews every ``job_heartbeat_s``. When a
replica dies, its unfinished jobs stop being renewed; once the lease is past,
any replica (on its heartbeat, at start, or when someone asks for the job)
marks them ``failed`` with an "interrupted" message. They are not re-run: an
export is cheap to resubmit and a re-run could repeat whatever killed the
replica. Finished jobs and their files are purged after
``result_retention_s``.

Result files are written before the row says ``completed`` and deleted again
when that update loses (the job was failed meanwhile), so a completed row
always has its whole file and no half-written file is ever visible.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from business_modules.export import repository as repo
from business_modules.export.config import ExportSettings
from business_modules.export.errors import (
    ExportBusyError,
    ExportError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    RenderTimeoutError,
    ResultGoneError,
)
from business_modules.export.kinds import JobStatus
from business_modules.export.models import ExportRequest
from business_modules.export.renderer import RenderedDocument, render_document
from business_modules.export.repository import ExportJob
from business_modules.export.results import ResultStore
from business_modules.export.source import build_source
from business_modules.storage import Database, StorageError
from business_modules.storage.heartbeat import run_heartbeat

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the export replica running this job stopped before it finished; submit it again"
STOPPED = "interrupted: the export service shut down before this job finished; submit it again"
PURGE_EVERY_BEATS = 30

RenderFn = Callable[..., RenderedDocument]


@dataclass(frozen=True, slots=True)
class ResultFile:
    path: Path
    media_type: str
    filename: str
    size_bytes: int


class ExportService:
    """Export jobs of one replica over a shared database and result folder."""

    def __init__(
        self,
        *,
        db: Database,
        results: ResultStore,
        settings: ExportSettings | None = None,
        runner_id: str | None = None,
        clock: Callable[[], float] = time.time,
        render: RenderFn = render_document,
    ) -> None:
        self.db = db
        self.results = results
        self.settings = settings or ExportSettings()
        self.runner_id = runner_id or uuid.uuid4().hex
        self._clock = clock
        self._render_fn = render
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_renders)
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.max_concurrent_renders, thread_name_prefix="export-render"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Fail jobs orphaned by dead replicas, clear stale temp files, start the heartbeat."""
        await self.recover()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="export-heartbeat")

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat; jobs still unfinished are cancelled and marked failed.

        Waits are bounded by ``grace_s``: a task that does not finish in time is
        logged and left to the lease sweeper of another replica.
        """
        self._stopping.set()
        if self._heartbeat is not None:
            _, pending = await asyncio.wait({self._heartbeat}, timeout=grace_s)
            for task in pending:
                task.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                logger.warning("%d export job task(s) did not stop within %g s", len(pending), grace_s)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def recover(self) -> int:
        """Fail jobs whose lease ran out; return how many."""
        await asyncio.to_thread(self.results.sweep_temp)
        return await self._fail_stale()

    # --- API ---------------------------------------------------------------------
    async def submit(self, request: ExportRequest, *, owner: str | None = None) -> ExportJob:
        """Store a queued job and start it in the background."""
        if len(self._tasks) >= self.settings.max_pending_jobs:
            raise ExportBusyError(
                f"this export replica already has {len(self._tasks)} unfinished jobs; retry in a few seconds"
            )
        now = self._clock()
        if request.metadata.created is None:
            created = datetime.fromtimestamp(now, tz=timezone.utc)
            request = request.model_copy(update={"metadata": request.metadata.model_copy(update={"created": created})})
        source = build_source(request, now=datetime.fromtimestamp(now, tz=timezone.utc))
        job = ExportJob(
            id=uuid.uuid4().hex,
            status=JobStatus.QUEUED,
            format=request.format.value,
            document_type=request.document_type.value,
            quality_level=request.quality_level.value,
            title=source.metadata.title,
            owner=owner,
            created_at=now,
            updated_at=now,
            filename=source.filename,
            media_type=request.format.media_type,
            runner_id=self.runner_id,
            lease_until=now + self.settings.job_lease_s,
        )
        await repo.insert_job(self.db, job, request_json=request.model_dump_json())
        task = asyncio.create_task(self._run(job.id, request), name=f"export-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, job_id: str, *, owner: str | None = None) -> ExportJob:
        """The job as stored (a dead replica's job is reported failed)."""
        job = await repo.get_job(self.db, job_id)
        if job is None or (job.owner is not None and owner != job.owner):
            raise JobNotFoundError(f"no export job {job_id}")
        if not job.status.finished and job.lease_until is not None and job.lease_until < self._clock():
            await self._fail_stale()
            job = await repo.get_job(self.db, job_id) or job
        return job

    async def result(self, job_id: str, *, owner: str | None = None) -> ResultFile:
        """The finished file of a completed job."""
        job = await self.get(job_id, owner=owner)
        if job.status is JobStatus.FAILED:
            raise JobFailedError(job_id, job.error)
        if job.status is not JobStatus.COMPLETED or job.result_name is None:
            raise JobNotReadyError(job_id, job.status.value)
        if job.expires_at is not None and job.expires_at < self._clock():
            raise ResultGoneError(f"the result of export job {job_id} expired")
        path = self.results.path(job.result_name)
        if not path.is_file():
            raise ResultGoneError(f"the result file of export job {job_id} is no longer available")
        return ResultFile(
            path=path,
            media_type=job.media_type or "application/octet-stream",
            filename=job.filename or path.name,
            size_bytes=job.size_bytes or path.stat().st_size,
        )

    async def wait(self, job_id: str, *, timeout_s: float, poll_s: float = 0.05, owner: str | None = None) -> ExportJob:
        """Poll until the job is finished or ``timeout_s`` passes; return its last state."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id, owner=owner)
            if job.status.finished or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(poll_s)

    async def render_now(self, request: ExportRequest) -> RenderedDocument:
        """Render without a job (the synchronous endpoint); same slots and timeout as jobs."""
        await self._slots.acquire()
        return await self._render(request, datetime.fromtimestamp(self._clock(), tz=timezone.utc))

    async def purge_expired(self) -> int:
        """Delete finished jobs past their retention, file first."""
        purged = 0
        for job in await repo.list_expired(self.db, now=self._clock()):
            if job.result_name:
                await asyncio.to_thread(self.results.delete, job.result_name)
            purged += await repo.delete_job(self.db, job.id)
        return purged

    # --- worker --------------------------------------------------------------------
    async def _run(self, job_id: str, request: ExportRequest) -> None:
        attempt = uuid.uuid4().hex
        await self._slots.acquire()
        now = self._clock()
        try:
            claimed = await repo.claim(
                self.db, job_id, runner_id=self.runner_id, attempt_id=attempt, now=now,
                lease_until=now + self.settings.job_lease_s,
            )
        except BaseException:
            self._slots.release()
            raise
        if not claimed:
            self._slots.release()
            logger.info("export job %s was no longer queued when its slot came up", job_id)
            return
        written: str | None = None
        try:
            rendered = await self._render(request, datetime.fromtimestamp(now, tz=timezone.utc))
            written = f"{job_id}.{request.format.extension}"
            await asyncio.to_thread(self.results.write, written, rendered.data)
            finished = self._clock()
            won = await repo.complete(
                self.db, job_id, attempt_id=attempt, now=finished,
                expires_at=finished + self.settings.result_retention_s, result_name=written,
                filename=rendered.filename, media_type=rendered.media_type, size_bytes=len(rendered.data),
                quality_score=rendered.quality.score, quality_issues=rendered.quality.issues,
            )
            if not won:
                logger.warning("export job %s was failed while it rendered; its file is discarded", job_id)
                await asyncio.to_thread(self.results.delete, written)
        except asyncio.CancelledError:
            await asyncio.shield(self._record_failure(job_id, attempt, STOPPED, written))
            raise
        except ExportError as exc:
            await self._record_failure(job_id, attempt, str(exc), written)
        except StorageError as exc:
            logger.error("export job %s: database error, left for the lease sweeper: %s", job_id, exc)
            if written is not None:
                await asyncio.to_thread(self.results.delete, written)
        except Exception as exc:  # noqa: BLE001 - recorded on the job and logged, never silent
            logger.exception("export job %s failed unexpectedly", job_id)
            await self._record_failure(job_id, attempt, f"internal error: {type(exc).__name__}", written)

    async def _render(self, request: ExportRequest, now: datetime) -> RenderedDocument:
        """Run the blocking renderer in the render pool; the caller holds one slot,
        which is released when the render thread really ends (even after a timeout)."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, functools.partial(self._render_fn, request, now=now))
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(_release_and_drain(self._slots))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(self.settings.render_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise RenderTimeoutError(
                f"rendering took longer than {self.settings.render_timeout_s:g} s; try smaller content"
            ) from None

    async def _record_failure(self, job_id: str, attempt: str, error: str, written: str | None) -> None:
        if written is not None:
            await asyncio.to_thread(self.results.delete, written)
        now = self._clock()
        try:
            await repo.fail(self.db, job_id, error=error, now=now,
                            expires_at=now + self.settings.result_retention_s, attempt_id=attempt)
        except StorageError as exc:
            logger.error("export job %s: could not record failure (%s): %s", job_id, error, exc)

    async def _fail_stale(self) -> int:
        now = self._clock()
        count = await repo.fail_stale(
            self.db, now=now, error=INTERRUPTED, expires_at=now + self.settings.result_retention_s
        )
        if count:
            logger.warning("marked %d export job(s) failed: their replica stopped renewing them", count)
        return count

    async def _heartbeat_loop(self) -> None:
        await run_heartbeat(self._beat, every_s=self.settings.job_heartbeat_s, stopping=self._stopping, name="export")

    async def _beat(self, beats: int) -> None:
        now = self._clock()
        await repo.renew_leases(self.db, runner_id=self.runner_id, now=now, lease_until=now + self.settings.job_lease_s)
        await self._fail_stale()
        if beats % PURGE_EVERY_BEATS == 0:
            await self.purge_expired()


def _release_and_drain(slots: asyncio.Semaphore) -> Callable[[asyncio.Future], None]:
    def done(future: asyncio.Future) -> None:
        slots.release()
        if not future.cancelled():
            future.exception()  # retrieved, so a timed-out render's error is not reported as unhandled

    return done
