"""Export jobs on SQLite and PostgreSQL: lifecycle, failures, timeouts,
replica death, races with the stale-lease sweeper, retention, ownership."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from business_modules.export import (
    ExportBusyError,
    ExportRequest,
    ExportService,
    ExportSettings,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobStatus,
    RenderError,
    ResultGoneError,
    ResultStore,
    render_document,
)
from business_modules.export import repository as repo
from business_modules.export.repository import ExportJob
from business_modules.export.service import INTERRUPTED
from tests.business_modules.export_samples import UNICODE, structured_payload

WAIT_S = 30.0


class Clock:
    """Injected wall clock the tests can move forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_service(database, tmp_path):
    services: list[ExportService] = []

    async def make(**kwargs) -> ExportService:
        settings = kwargs.pop("settings", None) or ExportSettings(job_heartbeat_s=0.2, job_lease_s=1.0)
        service = ExportService(db=database, results=ResultStore(tmp_path / "exports"), settings=settings, **kwargs)
        await service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()


def request(fmt: str = "markdown", **extra) -> ExportRequest:
    return ExportRequest.model_validate(structured_payload(fmt=fmt, **extra))


def files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "exports").iterdir())


async def test_job_lifecycle_stores_result(make_service, database, tmp_path):
    service = await make_service()
    job = await service.submit(request("docx"), owner="acme")
    assert job.status is JobStatus.QUEUED
    stored = await repo.get_job(database, job.id)
    assert stored is not None and stored.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED)
    assert stored.title == f"Quarterly report {UNICODE}"

    done = await service.wait(job.id, timeout_s=WAIT_S, owner="acme")
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.quality_score is not None and 0 < done.quality_score <= 1
    assert done.started_at is not None and done.finished_at >= done.started_at
    result = await service.result(job.id, owner="acme")
    assert result.media_type.endswith("wordprocessingml.document")
    assert result.filename == f"Quarterly-report-{UNICODE.replace(' ', '-')}.docx"
    assert result.path.read_bytes()[:2] == b"PK" and result.size_bytes == result.path.stat().st_size
    assert files(tmp_path) == [f"{job.id}.docx"]  # no temp files left behind
    stored_request = await repo.get_request_json(database, job.id)
    assert '"created"' in stored_request  # the stored request can be re-rendered identically


async def test_other_owner_cannot_see_a_job(make_service):
    service = await make_service()
    job = await service.submit(request(), owner="acme")
    await service.wait(job.id, timeout_s=WAIT_S, owner="acme")
    with pytest.raises(JobNotFoundError):
        await service.get(job.id, owner="globex")
    with pytest.raises(JobNotFoundError):
        await service.result(job.id, owner=None)
    with pytest.raises(JobNotFoundError):
        await service.get("0" * 32)


async def test_render_failure_is_reported_and_leaves_no_file(make_service, tmp_path):
    def broken(req, *, now):
        raise RenderError("docx rendering failed: boom")

    service = await make_service(render=broken)
    job = await service.submit(request("docx"))
    done = await service.wait(job.id, timeout_s=WAIT_S)
    assert done.status is JobStatus.FAILED and "boom" in done.error
    with pytest.raises(JobFailedError, match="boom"):
        await service.result(job.id)
    assert files(tmp_path) == []


async def test_download_before_completion_is_refused(make_service):
    gate = threading.Event()

    def slow(req, *, now):
        gate.wait(WAIT_S)
        return render_document(req, now=now)

    service = await make_service(render=slow)
    job = await service.submit(request())
    try:
        with pytest.raises(JobNotReadyError) as info:
            await service.result(job.id)
        assert info.value.status in ("queued", "running")
        assert (await service.get(job.id)).status in (JobStatus.QUEUED, JobStatus.RUNNING)
    finally:
        gate.set()
    assert (await service.wait(job.id, timeout_s=WAIT_S)).status is JobStatus.COMPLETED


async def test_render_timeout_fails_job_and_discards_late_output(make_service, tmp_path):
    release = threading.Event()

    def stuck(req, *, now):
        release.wait(WAIT_S)
        return render_document(req, now=now)

    settings = ExportSettings(render_timeout_s=0.3, job_heartbeat_s=0.2, job_lease_s=1.0)
    service = await make_service(render=stuck, settings=settings)
    job = await service.submit(request())
    done = await service.wait(job.id, timeout_s=WAIT_S)
    assert done.status is JobStatus.FAILED and "longer than 0.3 s" in done.error
    release.set()
    await asyncio.sleep(0.3)
    assert files(tmp_path) == []


async def test_job_of_a_dead_replica_is_reported_failed(make_service, database):
    now = time.time()
    orphan = ExportJob(
        id="a" * 32, status=JobStatus.RUNNING, format="pdf", document_type="report",
        quality_level="professional", title="orphan", owner=None, created_at=now - 120, updated_at=now - 120,
        runner_id="dead-replica", lease_until=now - 60,
    )
    await repo.insert_job(database, orphan, request_json="{}")
    service = await make_service()  # start() sweeps stale leases
    job = await service.get(orphan.id)
    assert job.status is JobStatus.FAILED and job.error == INTERRUPTED
    with pytest.raises(JobFailedError, match="interrupted"):
        await service.result(orphan.id)


async def test_stale_lease_is_detected_when_asked(make_service, database):
    clock = Clock()
    gate = threading.Event()

    def slow(req, *, now):
        gate.wait(WAIT_S)
        return render_document(req, now=now)

    settings = ExportSettings(job_heartbeat_s=60, job_lease_s=120)  # no heartbeat during the test
    service = await make_service(render=slow, settings=settings, clock=clock)
    job = await service.submit(request())
    try:
        for _ in range(200):
            if (await service.get(job.id)).status is JobStatus.RUNNING:
                break
            await asyncio.sleep(0.02)
        clock.now += 500  # the lease runs out as if this replica had died
        reported = await service.get(job.id)
        assert reported.status is JobStatus.FAILED and reported.error == INTERRUPTED
    finally:
        gate.set()
    # The worker finishes later but loses the compare-and-set: no completed row, no file.
    await asyncio.sleep(0.5)
    for _ in range(100):
        if not service._tasks:
            break
        await asyncio.sleep(0.05)
    final = await service.get(job.id)
    assert final.status is JobStatus.FAILED and final.result_name is None
    assert not any((service.results.root).iterdir())


async def test_live_jobs_keep_their_lease(make_service, database):
    gate = threading.Event()

    def slow(req, *, now):
        gate.wait(WAIT_S)
        return render_document(req, now=now)

    service = await make_service(render=slow)  # lease 1 s, heartbeat 0.2 s
    job = await service.submit(request())
    try:
        await asyncio.sleep(1.6)
        assert (await service.get(job.id)).status is JobStatus.RUNNING
    finally:
        gate.set()
    assert (await service.wait(job.id, timeout_s=WAIT_S)).status is JobStatus.COMPLETED


async def test_expired_results_are_gone_then_purged(make_service, tmp_path):
    clock = Clock()
    settings = ExportSettings(result_retention_s=60, job_heartbeat_s=0.2, job_lease_s=1.0)
    service = await make_service(settings=settings, clock=clock)
    job = await service.submit(request())
    assert (await service.wait(job.id, timeout_s=WAIT_S)).status is JobStatus.COMPLETED
    clock.now += 61
    with pytest.raises(ResultGoneError):
        await service.result(job.id)
    assert await service.purge_expired() == 1
    assert files(tmp_path) == []
    with pytest.raises(JobNotFoundError):
        await service.get(job.id)


async def test_replica_refuses_work_past_its_queue_bound(make_service):
    gate = threading.Event()

    def slow(req, *, now):
        gate.wait(WAIT_S)
        return render_document(req, now=now)

    settings = ExportSettings(max_pending_jobs=1, job_heartbeat_s=0.2, job_lease_s=1.0)
    service = await make_service(render=slow, settings=settings)
    first = await service.submit(request())
    try:
        with pytest.raises(ExportBusyError):
            await service.submit(request())
    finally:
        gate.set()
    assert (await service.wait(first.id, timeout_s=WAIT_S)).status is JobStatus.COMPLETED


async def test_shutdown_marks_unfinished_jobs_failed(make_service, database, tmp_path):
    gate = threading.Event()

    def slow(req, *, now):
        gate.wait(WAIT_S)
        return render_document(req, now=now)

    service = await make_service(render=slow)
    job = await service.submit(request())
    await asyncio.sleep(0.2)
    await service.close()
    gate.set()
    for _ in range(100):  # let the released render thread end while the loop is still open
        if not any(t.name.startswith("export-render") for t in threading.enumerate()):
            break
        await asyncio.sleep(0.05)
    stored = await repo.get_job(database, job.id)
    assert stored.status is JobStatus.FAILED and "shut down" in stored.error
    assert files(tmp_path) == []
