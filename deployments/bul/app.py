"""The BUL FastAPI app: parse, call the business module, shape the answer.

Routes (inside the application; the Serve route prefix is ``/bul`` and the
gateway reaches the same routes as ``/api/v1/bul/...``):

- ``GET /document-types``: the types, their sections and input JSON schemas.
- ``POST /documents/generate`` and the original ``POST /query``: a generation task (202).
- ``GET /tasks/{id}/status`` (also the original ``/task/{id}/status``): progress per section.
- ``GET /tasks/{id}/events``: server-sent events, one per change, until the task ends.
- ``POST /tasks/{id}/cancel``.
- ``GET /documents/{id}``: every version; ``POST /documents/{id}/sections/{index}/regenerate`` (202).
- ``GET /documents/{id}/download?format=markdown|html|pdf|docx&version=N``: rendered with
  the Export module's renderers (the same code as the export app, no second hop).
- ``GET /health``.

Domain errors map to HTTP in `ERRORS` only; every error has the uniform body.
Tasks created through the gateway belong to the caller's tenant; another
tenant's ids (and unowned ones) are 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from business_modules.bul import (
    EXPORT_FORMATS,
    BulBusyError,
    BulService,
    DocumentNotFoundError,
    DocumentNotReadyError,
    GenerateRequest,
    InputTooLargeError,
    InvalidRequestError,
    RegenerateRequest,
    RenderFailedError,
    Task,
    TaskFinishedError,
    TaskNotFoundError,
    UnknownDocumentTypeError,
)
from deployments.bul import schemas as s
from deployments.bul.runtime import BulAppConfig, Runtime
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
from deployments.export.app import content_disposition

GATEWAY_PREFIX = "/api/v1/bul"
BUSY_RETRY_AFTER_S = 5
SECONDS_PER_SECTION = 5
_HEX_ID = 32
_TOO_LONG = {"string_too_long", "too_long"}

ERRORS: dict[type[BaseException], ErrorSpec] = {
    InputTooLargeError: ErrorSpec(413, "content_too_large"),
    UnknownDocumentTypeError: ErrorSpec(422, "unknown_document_type"),
    InvalidRequestError: ErrorSpec(422, "invalid_inputs"),
    TaskNotFoundError: ErrorSpec(404, "task_not_found"),
    DocumentNotFoundError: ErrorSpec(404, "document_not_found"),
    DocumentNotReadyError: ErrorSpec(409, "document_not_ready"),
    TaskFinishedError: ErrorSpec(409, "task_finished"),
    BulBusyError: ErrorSpec(429, "too_many_jobs", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}),
    RenderFailedError: ErrorSpec(500, "render_failed"),
    **STORAGE_ERRORS,
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _service(request: Request) -> BulService:
    return await _runtime(request).service()



Service = Annotated[BulService, Depends(_service)]
Owner = Annotated[str | None, Depends(caller_tenant)]


def _base(request: Request) -> str:
    return client_base_path(request, GATEWAY_PREFIX)



def _task_id(value: str) -> str:
    if len(value) != _HEX_ID or any(c not in "0123456789abcdef" for c in value):
        raise TaskNotFoundError(f"no BUL task {value[:64]}")
    return value


def _document_id(value: str) -> str:
    if len(value) != _HEX_ID or any(c not in "0123456789abcdef" for c in value):
        raise DocumentNotFoundError(f"no BUL document {value[:64]}")
    return value


def _status(task: Task, base: str) -> s.TaskStatusOut:
    done = sum(1 for e in task.progress if e.get("status") == "completed")
    return s.TaskStatusOut(
        task_id=task.id, document_id=task.document_id, kind=task.kind.value, status=task.status.value,
        progress=round(done / len(task.progress), 4) if task.progress else 0.0, steps_done=done,
        steps_total=len(task.progress), sections=[s.SectionProgress(**e) for e in task.progress],
        error=task.error, version=task.version, created_at=iso_time(task.created_at) or "",
        started_at=iso_time(task.started_at), finished_at=iso_time(task.finished_at),
        documents=[f"{base}/documents/{task.document_id}"] if task.status.value == "completed" else [],
    )


def _accepted(task: Task, service: BulService, request: Request, document_type: str, title: str) -> s.TaskAccepted:
    base = _base(request)
    return s.TaskAccepted(
        task_id=task.id, document_id=task.document_id, status=task.status.value, document_type=document_type,
        title=title, estimated_time=SECONDS_PER_SECTION * len(task.progress),
        status_url=f"{base}/tasks/{task.id}/status", events_url=f"{base}/tasks/{task.id}/events",
        document_url=f"{base}/documents/{task.document_id}",
    )


router = APIRouter(tags=["bul"])


@router.get("/document-types", response_model=list[s.DocumentTypeInfo], summary="Document types and input schemas")
async def document_types() -> Any:
    return [s.DocumentTypeInfo(name=t.name, title=t.title, description=t.description,
                               sections=[x.heading for x in t.sections], input_schema=t.input_schema())
            for t in BulService.document_types()]


@router.post("/documents/generate", status_code=202, response_model=s.TaskAccepted, summary="Generate a document")
async def generate(body: GenerateRequest, request: Request, service: Service, owner: Owner) -> Any:
    task = await service.submit(body, owner=owner)
    document, _, _ = await service.document(task.document_id, owner=owner)
    return _accepted(task, service, request, document.document_type, document.title)


@router.post("/query", status_code=202, response_model=s.TaskAccepted, summary="Generate (the original API)")
async def query(body: GenerateRequest, request: Request, service: Service, owner: Owner) -> Any:
    return await generate(body, request, service, owner)


@router.get("/tasks/{task_id}/status", response_model=s.TaskStatusOut, summary="Status and progress per section")
async def task_status(task_id: str, request: Request, service: Service, owner: Owner) -> Any:
    return _status(await service.get(_task_id(task_id), owner=owner), _base(request))


@router.get("/task/{task_id}/status", response_model=s.TaskStatusOut, include_in_schema=False)
async def task_status_original(task_id: str, request: Request, service: Service, owner: Owner) -> Any:
    return await task_status(task_id, request, service, owner)


@router.get("/tasks/{task_id}/events", response_class=StreamingResponse, summary="Progress as server-sent events")
async def task_events(task_id: str, request: Request, service: Service, owner: Owner) -> StreamingResponse:
    first = await service.get(_task_id(task_id), owner=owner)  # 404 before the stream starts
    base = _base(request)

    async def events() -> AsyncIterator[bytes]:
        async for task in service.events(first.id, owner=owner):
            name = "end" if task.status.finished else "progress"
            data = _status(task, base).model_dump_json()
            yield f"event: {name}\ndata: {data}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/tasks/{task_id}/cancel", response_model=s.TaskStatusOut, summary="Cancel a queued or running task")
async def cancel(task_id: str, request: Request, service: Service, owner: Owner) -> Any:
    return _status(await service.cancel(_task_id(task_id), owner=owner), _base(request))


@router.get("/documents/{document_id}", response_model=s.DocumentOut, summary="A document with every version")
async def document(document_id: str, request: Request, service: Service, owner: Owner) -> Any:
    doc, versions, tasks = await service.document(_document_id(document_id), owner=owner)
    base = _base(request)
    return s.DocumentOut(
        document_id=doc.id, document_type=doc.document_type, title=doc.title, current_version=doc.current_version,
        outline=doc.outline, created_at=iso_time(doc.created_at) or "",
        versions=[s.VersionOut(version=v.version, task_id=v.task_id, created_at=iso_time(v.created_at) or "",
                               sections=[s.SectionOut(**x) for x in v.sections], markdown=v.markdown)
                  for v in versions],
        tasks=[t.id for t in tasks],
        download_urls={fmt: f"{base}/documents/{doc.id}/download?format={fmt}" for fmt in EXPORT_FORMATS},
    )


@router.post("/documents/{document_id}/sections/{index}/regenerate", status_code=202, response_model=s.TaskAccepted,
             summary="Rewrite one section into a new version")
async def regenerate(document_id: str, index: int, request: Request, service: Service, owner: Owner,
                     body: Annotated[RegenerateRequest | None, Body()] = None) -> Any:
    task = await service.regenerate(_document_id(document_id), index, body or RegenerateRequest(), owner=owner)
    doc, _, _ = await service.document(task.document_id, owner=owner)
    return _accepted(task, service, request, doc.document_type, doc.title)


@router.get("/documents/{document_id}/download", response_class=Response, summary="Markdown, HTML, PDF or DOCX")
async def download(document_id: str, service: Service, owner: Owner,
                   format: Annotated[str, Query(max_length=16)] = "markdown",
                   version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    rendered = await service.export(_document_id(document_id), format.strip().lower(), owner=owner,
                                    version=version)
    return Response(content=rendered.data, media_type=rendered.media_type,
                    headers={"Content-Disposition": content_disposition(rendered.filename),
                             "Cache-Control": "private, no-store"})


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """200 when the database answers; 503 (uniform body) otherwise."""
    await _runtime(request).ping()
    return {"status": "healthy", "service": "bul", "database": "ok", "llm_app": _runtime(request).config.llm_app,
            "document_types": [t.name for t in BulService.document_types()],
            "timestamp": datetime.now(timezone.utc).isoformat()}


def _install_validation_handler(app: FastAPI) -> None:
    """Oversized fields are 413 ``content_too_large``; everything else as the shared handler says."""
    shared = app.exception_handlers[RequestValidationError]

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        too_long = [e for e in exc.errors() if e.get("type") in _TOO_LONG]
        if too_long:
            where = ".".join(str(p) for p in too_long[0].get("loc", ()) if p != "body")
            return error_response(413, "content_too_large", f"{where}: {too_long[0].get('msg')}",
                                  get_request_id(request))
        return await shared(request, exc)

    app.add_exception_handler(RequestValidationError, on_validation_error)


def create_app(config: BulAppConfig | None = None, *, llm: Any = None) -> FastAPI:
    """The app of one replica (or of a test; ``llm`` replaces the Serve LLM client)."""
    config = config or BulAppConfig()
    runtime = Runtime(config, llm=llm)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.try_start()
        freeze_startup_heap()  # the renders' cycle collections stay cheap (deployments.common.heap)
        yield
        await runtime.close()

    app = FastAPI(title="Blatam BUL", version="1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, ERRORS)
    _install_validation_handler(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=False)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    app.include_router(router)
    return app


__all__ = ["ERRORS", "create_app"]
