"""The export FastAPI app: parse, call the business module, shape the answer.

Routes (inside the application; the Serve route prefix is ``/export`` and the
gateway reaches the same routes as ``/api/v1/export/...``, so the original
``POST /api/v1/export`` and ``GET /api/v1/export/{id}/status|download`` work
through the gateway unchanged):

- ``POST /``: create an export job -> ``{task_id, status, download_url, ...}`` (202).
- ``GET /{task_id}/status``: queued, running, completed or failed (with the error).
- ``GET /{task_id}/download``: the file with its content type and filename;
  409 while the job is not completed (or failed), 410 once it expired.
- ``POST /generate``: render synchronously and return the file (the root
  README's ``POST /api/v1/exports/generate {content, format}``).
- ``POST /validate``: what an export would contain, and its quality score.
- ``GET /formats``, ``GET /themes``, ``GET /health``.

Domain errors map to HTTP in `ERRORS` only; every error has the uniform body.
Jobs created through the gateway belong to the caller's tenant; direct calls
(no gateway caller) create and see only unowned jobs.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from business_modules.export import (
    THEMES,
    ContentTooLargeError,
    ExportBusyError,
    ExportFormat,
    ExportJob,
    ExportRequest,
    ExportService,
    InvalidContentError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    JobStatus,
    RenderError,
    RenderTimeoutError,
    ResultGoneError,
    preview_document,
)
from deployments.common.heap import freeze_startup_heap
from deployments.common import (
    BodySizeLimitMiddleware,
    ErrorSpec,
    InlineBodyMiddleware,
    RequestIdMiddleware,
    error_response,
    get_request_id,
    install_error_handlers,
)
from deployments.common.service_app import STORAGE_ERRORS, caller_tenant, client_base_path, iso_time
from deployments.export import schemas as s
from deployments.export.runtime import ExportAppConfig, Runtime

GATEWAY_PREFIX = "/api/v1/export"
"""Where clients of the gateway reach this app's routes."""

BUSY_RETRY_AFTER_S = 5
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_TOO_LONG = {"string_too_long", "too_long"}

ERRORS: dict[type[BaseException], ErrorSpec] = {
    ContentTooLargeError: ErrorSpec(413, "content_too_large"),
    InvalidContentError: ErrorSpec(422, "invalid_content"),
    JobNotFoundError: ErrorSpec(404, "job_not_found"),
    JobFailedError: ErrorSpec(409, "job_failed"),
    JobNotReadyError: ErrorSpec(409, "job_not_ready"),
    ResultGoneError: ErrorSpec(410, "result_gone"),
    ExportBusyError: ErrorSpec(503, "export_busy", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}),
    RenderTimeoutError: ErrorSpec(504, "render_timeout"),
    RenderError: ErrorSpec(500, "render_failed"),
    **STORAGE_ERRORS,
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _service(request: Request) -> ExportService:
    return await _runtime(request).service()



Service = Annotated[ExportService, Depends(_service)]
Owner = Annotated[str | None, Depends(caller_tenant)]


def _base_path(request: Request) -> str:
    return client_base_path(request, GATEWAY_PREFIX)



def _check_id(task_id: str) -> str:
    if not _TASK_ID.match(task_id):
        raise JobNotFoundError(f"no export job {task_id[:64]}")
    return task_id


def _status(job: ExportJob, base: str) -> s.ExportStatus:
    done = job.status is JobStatus.COMPLETED
    return s.ExportStatus(
        task_id=job.id,
        status=job.status.value,
        format=job.format,
        document_type=job.document_type,
        quality_level=job.quality_level,
        title=job.title,
        created_at=iso_time(job.created_at) or "",
        started_at=iso_time(job.started_at),
        finished_at=iso_time(job.finished_at),
        expires_at=iso_time(job.expires_at),
        error=job.error,
        quality_score=job.quality_score,
        quality_issues=list(job.quality_issues),
        filename=job.filename,
        size_bytes=job.size_bytes if done else None,
        download_url=f"{base}/{job.id}/download" if done else None,
    )


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / 5987)."""
    stem, dot, ext = filename.rpartition(".")
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    ascii_stem = re.sub(r"-{2,}", "-", re.sub(r'[^A-Za-z0-9._-]+', "-", ascii_stem)).strip("-.") or "download"
    fallback = f"{ascii_stem}{dot}{ext}"
    return f"attachment; filename=\"{fallback}\"; filename*=utf-8''{quote(filename, safe='')}"


jobs = APIRouter(tags=["export jobs"])


@jobs.post("/", status_code=202, response_model=s.ExportAccepted, summary="Create an export job")
async def create_export(body: ExportRequest, request: Request, service: Service, owner: Owner) -> Any:
    job = await service.submit(body, owner=owner)
    base = _base_path(request)
    return s.ExportAccepted(
        task_id=job.id,
        status=job.status.value,
        message="Export job created",
        format=job.format,
        document_type=job.document_type,
        quality_level=job.quality_level,
        title=job.title,
        quality_score=job.quality_score,
        status_url=f"{base}/{job.id}/status",
        download_url=f"{base}/{job.id}/download",
    )


@jobs.get("/{task_id}/status", response_model=s.ExportStatus, summary="Status of an export job")
async def export_status(task_id: str, request: Request, service: Service, owner: Owner) -> Any:
    return _status(await service.get(_check_id(task_id), owner=owner), _base_path(request))


@jobs.get("/{task_id}/download", response_class=Response, summary="The exported file")
async def download_export(task_id: str, service: Service, owner: Owner) -> Response:
    result = await service.result(_check_id(task_id), owner=owner)
    # NOTE: the whole file as one body, not FileResponse: results are bounded by the
    # content limits (a few MB), and a streamed FileResponse comes back empty through
    # the gateway's in-process forwarding (call_asgi reports a disconnect right after
    # the request body, which cancels Starlette's file streaming).
    try:
        data = await asyncio.to_thread(result.path.read_bytes)
    except FileNotFoundError:  # purged between the lookup and the read
        raise ResultGoneError(f"the result file of export job {task_id} is no longer available") from None
    return Response(
        content=data,
        media_type=result.media_type,
        headers={"Content-Disposition": content_disposition(result.filename), "Cache-Control": "private, no-store"},
    )


direct = APIRouter(tags=["export"])


@direct.post("/generate", response_class=Response, summary="Render synchronously and return the file")
async def generate(body: ExportRequest, service: Service) -> Response:
    rendered = await service.render_now(body)
    return Response(
        content=rendered.data,
        media_type=rendered.media_type,
        headers={
            "Content-Disposition": content_disposition(rendered.filename),
            "X-Quality-Score": f"{rendered.quality.score:.2f}",
            "Cache-Control": "private, no-store",
        },
    )


@direct.post("/validate", response_model=s.ValidationReport, summary="Check content without rendering it")
async def validate(body: ExportRequest) -> Any:
    preview = preview_document(body, now=datetime.now(timezone.utc))
    return s.ValidationReport(
        valid=True,
        title=preview.title,
        sections=preview.sections,
        filename=preview.filename,
        theme=preview.theme,
        table_of_contents=preview.toc,
        quality_score=preview.quality.score,
        quality_issues=preview.quality.issues,
    )


@direct.get("/formats", response_model=list[s.FormatInfo])
async def formats() -> Any:
    return [s.FormatInfo(format=f.value, extension=f.extension, media_type=f.media_type) for f in ExportFormat]


@direct.get("/themes", response_model=list[s.ThemeInfo])
async def themes() -> Any:
    return [
        s.ThemeInfo(name=t.name, primary=t.primary, accent=t.accent, text=t.text, body_font=t.office_body_font,
                    heading_font=t.office_heading_font)
        for t in THEMES.values()
    ]


@direct.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """200 when the database answers; 503 (uniform body) otherwise."""
    await _runtime(request).ping()
    return {
        "status": "healthy",
        "service": "export",
        "database": "ok",
        "formats": [f.value for f in ExportFormat],
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }


def _install_validation_handler(app: FastAPI) -> None:
    """Oversized content is 413 ``content_too_large``; everything else as the shared handler says."""
    shared = app.exception_handlers[RequestValidationError]

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        too_long = [e for e in exc.errors() if e.get("type") in _TOO_LONG]
        if too_long:
            where = ".".join(str(p) for p in too_long[0].get("loc", ()) if p != "body")
            return error_response(413, "content_too_large", f"{where}: {too_long[0].get('msg')}",
                                  get_request_id(request))
        return await shared(request, exc)

    app.add_exception_handler(RequestValidationError, on_validation_error)


def create_app(config: ExportAppConfig | None = None) -> FastAPI:
    """The app of one replica (or of a test): routes, error mapping, middleware."""
    config = config or ExportAppConfig()
    runtime = Runtime(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.try_start()
        freeze_startup_heap()  # the renders' cycle collections stay cheap (deployments.common.heap)
        yield
        await runtime.close()

    app = FastAPI(title="Blatam export", version="1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, ERRORS)
    _install_validation_handler(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=False)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    app.include_router(direct)
    app.include_router(jobs)
    return app
