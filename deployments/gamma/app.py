"""The gamma FastAPI app: parse, call the business module, shape the answer.

Routes (inside the application; the Serve route prefix is ``/gamma`` and the
gateway reaches them as ``/api/v1/gamma/...``):

- ``POST /content/generate``: the original Gamma App call; waits for its
  generation and answers ``{content_id, title, content, quality_score,
  suggestions, export_urls}`` (502 ``generation_failed`` with the reason when
  the LLM fails, 504 when it takes longer than ``content_wait_s``).
- ``POST /generations``: Gamma's public API shape -> ``{generationId}`` (202).
- ``GET /generations/{id}``: status; once completed the cards (JSON), the
  HTML page and export links; the reason once failed.
- ``GET /generations/{id}/files/{format}``: pdf, pptx, docx, html or markdown,
  rendered by Export's renderer from the stored cards.
- ``GET /generations/{id}/cards/{n}/chart.png|svg``: the chart of card ``n``.
- ``GET /themes`` (Export's themes), ``GET /health``.

Domain errors map to HTTP in `ERRORS` only; every error has the uniform body.
Generations created through the gateway belong to the caller's tenant;
direct calls (no gateway caller) create and see only unowned generations.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from business_modules.export import THEMES, RenderError, RenderTimeoutError
from business_modules.gamma import (
    EXPORT_FORMATS,
    ContentRequest,
    GammaBusyError,
    GammaService,
    GenerationFailedError,
    GenerationNotFoundError,
    GenerationNotReadyError,
    GenerationPlan,
    GenerationRequest,
    GenerationRow,
    GenerationTimeoutError,
    InvalidInputError,
    JobStatus,
    OutputFormat,
    render_markdown,
    render_text,
)
from business_modules.gamma.models import Deck
from business_modules.llm_client import LLMClient
from deployments.common.heap import freeze_startup_heap
from deployments.common import (
    ApiError,
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
from deployments.export.schemas import ThemeInfo
from deployments.gamma import schemas as s
from deployments.gamma.runtime import GammaAppConfig, Runtime

GATEWAY_PREFIX = "/api/v1/gamma"
BUSY_RETRY_AFTER_S = 5
_ID = re.compile(r"^[0-9a-f]{32}$")
_TOO_LARGE_FIELDS = {"inputText", "description"}

ERRORS: dict[type[BaseException], ErrorSpec] = {
    InvalidInputError: ErrorSpec(422, "invalid_input"),
    GenerationNotFoundError: ErrorSpec(404, "generation_not_found"),
    GenerationFailedError: ErrorSpec(409, "generation_failed"),
    GenerationNotReadyError: ErrorSpec(409, "generation_not_ready"),
    GenerationTimeoutError: ErrorSpec(504, "generation_timeout"),
    GammaBusyError: ErrorSpec(503, "gamma_busy", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}),
    RenderTimeoutError: ErrorSpec(504, "render_timeout"),
    RenderError: ErrorSpec(500, "render_failed"),
    **STORAGE_ERRORS,
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _service(request: Request) -> GammaService:
    return await _runtime(request).service()



Service = Annotated[GammaService, Depends(_service)]
Owner = Annotated[str | None, Depends(caller_tenant)]


def _base_path(request: Request) -> str:
    return client_base_path(request, GATEWAY_PREFIX)



def _check_id(generation_id: str) -> str:
    if not _ID.match(generation_id):
        raise GenerationNotFoundError(f"no generation {generation_id[:64]}")
    return generation_id


def _export_urls(base: str, generation_id: str) -> dict[str, str]:
    return {fmt: f"{base}/generations/{generation_id}/files/{fmt}" for fmt in EXPORT_FORMATS}


def _cards(deck: Deck, base: str, generation_id: str) -> list[dict[str, Any]]:
    cards = []
    for card in deck.cards:
        data = card.model_dump(mode="json")
        if card.chart is not None:
            data["chart"]["png_url"] = f"{base}/generations/{generation_id}/cards/{card.index + 1}/chart.png"
            data["chart"]["svg_url"] = f"{base}/generations/{generation_id}/cards/{card.index + 1}/chart.svg"
        cards.append(data)
    return cards


def _status(row: GenerationRow, base: str) -> s.GenerationStatus:
    done = row.status is JobStatus.COMPLETED and row.deck_json is not None
    plan = GenerationPlan.model_validate_json(row.plan_json) if row.plan_json != "{}" else None
    urls = _export_urls(base, row.id) if done else {}
    quality = row.quality
    return s.GenerationStatus(
        generation_id=row.id, status=row.status.value, format=row.format, text_mode=row.text_mode,
        theme_id=row.theme, title=row.title,
        cards=_cards(Deck.model_validate_json(row.deck_json), base, row.id) if done else None,
        html=row.html if done else None,
        export_url=urls.get(plan.export_as) if done and plan and plan.export_as else None,
        export_urls=urls, quality_score=row.quality_score,
        quality={"components": quality.get("components", {}), "metrics": quality.get("metrics", {})} if quality
        else None,
        suggestions=quality.get("suggestions", []), usage=row.usage, error=row.error,
        created_at=iso_time(row.created_at) or "", finished_at=iso_time(row.finished_at),
    )


content = APIRouter(tags=["content"])


@content.post("/content/generate", response_model=s.ContentGenerated, summary="Generate content (original API)")
async def generate_content(body: ContentRequest, request: Request, service: Service, owner: Owner) -> Any:
    row = await service.submit(GenerationPlan.from_content(body), request_json=body.model_dump_json(), owner=owner)
    row = await service.wait(row.id, owner=owner, timeout_s=service.settings.content_wait_s)
    if row.status is JobStatus.FAILED:
        raise ApiError(502, "generation_failed", f"content {row.id} could not be generated: {row.error}")
    if row.status is not JobStatus.COMPLETED:
        raise GenerationTimeoutError(f"content {row.id} is still {row.status.value} after "
                                     f"{service.settings.content_wait_s:g} s; poll GET /generations/{row.id}")
    _, deck = await service.deck(row.id, owner=owner)
    if body.output_format is OutputFormat.MARKDOWN:
        text = render_markdown(deck)
    elif body.output_format is OutputFormat.TEXT:
        text = render_text(deck)
    else:
        text = row.html or ""
    return s.ContentGenerated(
        content_id=row.id, title=deck.title, content=text, quality_score=row.quality_score or 0.0,
        suggestions=row.quality.get("suggestions", []), export_urls=_export_urls(_base_path(request), row.id),
        content_type=body.content_type.value,
    )


generations = APIRouter(prefix="/generations", tags=["generations"])


@generations.post("", status_code=202, response_model=s.GenerationAccepted, response_model_by_alias=True,
                  summary="Start a generation (Gamma's API shape)")
async def create_generation(body: GenerationRequest, request: Request, service: Service, owner: Owner) -> Any:
    row = await service.submit(GenerationPlan.from_generation(body), request_json=body.model_dump_json(by_alias=True),
                               owner=owner)
    return s.GenerationAccepted(generation_id=row.id, status=row.status.value,
                                status_url=f"{_base_path(request)}/generations/{row.id}")


@generations.get("/{generation_id}", response_model=s.GenerationStatus, response_model_by_alias=True,
                 summary="Status, cards, HTML and export links of a generation")
async def get_generation(generation_id: str, request: Request, service: Service, owner: Owner) -> Any:
    return _status(await service.get(_check_id(generation_id), owner=owner), _base_path(request))


@generations.get("/{generation_id}/files/{fmt}", response_class=Response, summary="The generation as a file")
async def generation_file(generation_id: str, fmt: str, service: Service, owner: Owner) -> Response:
    rendered = await service.export(_check_id(generation_id), fmt, owner=owner)
    return Response(content=rendered.data, media_type=rendered.media_type,
                    headers={"Content-Disposition": content_disposition(rendered.filename),
                             "Cache-Control": "private, no-store"})


@generations.get("/{generation_id}/cards/{card}/chart.{ext}", response_class=Response, summary="A card's chart")
async def generation_chart(generation_id: str, card: int, ext: str, service: Service, owner: Owner) -> Response:
    data = await service.chart(_check_id(generation_id), card - 1, ext, owner=owner)
    return Response(content=data, media_type="image/png" if ext == "png" else "image/svg+xml",
                    headers={"Cache-Control": "private, no-store"})


meta = APIRouter(tags=["gamma"])


@meta.get("/themes", response_model=list[ThemeInfo], summary="Themes (the same as Export's)")
async def themes() -> Any:
    return [ThemeInfo(name=t.name, primary=t.primary, accent=t.accent, text=t.text, body_font=t.office_body_font,
                      heading_font=t.office_heading_font) for t in THEMES.values()]


@meta.get("/health")
async def health(request: Request) -> dict[str, Any]:
    await _runtime(request).ping()
    return {"status": "healthy", "service": "gamma", "database": "ok", "llm_app": _runtime(request).config.llm_app,
            "timestamp": datetime.now(timezone.utc).isoformat()}


def _install_validation_handler(app: FastAPI) -> None:
    """An oversized ``inputText``/``description`` is 413 ``input_too_large``; the rest as the shared handler says."""
    shared = app.exception_handlers[RequestValidationError]

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ())]
            if error.get("type") == "string_too_long" and _TOO_LARGE_FIELDS & set(loc):
                where = ".".join(p for p in loc if p != "body")
                return error_response(413, "input_too_large", f"{where}: {error.get('msg')}", get_request_id(request))
        return await shared(request, exc)

    app.add_exception_handler(RequestValidationError, on_validation_error)


def create_app(config: GammaAppConfig | None = None, *, llm_factory: Callable[[], LLMClient] | None = None) -> FastAPI:
    """The app of one replica (or of a test): routes, error mapping, middleware."""
    config = config or GammaAppConfig()
    runtime = Runtime(config, llm_factory=llm_factory)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.try_start()
        freeze_startup_heap()  # the renders' cycle collections stay cheap (deployments.common.heap)
        yield
        await runtime.close()

    app = FastAPI(title="Blatam gamma", version="1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, ERRORS)
    _install_validation_handler(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=False)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    app.include_router(content)
    app.include_router(generations)
    app.include_router(meta)
    return app
