"""The redundancy FastAPI app: parse, call the business module, shape the answer.

Routes (all under the application's route prefix, e.g. ``/redundancy``):

- ``POST /analyze``, ``POST /similarity``, ``POST /quality``: the original endpoints.
- ``GET /health``, ``GET /stats``.
- ``POST|GET /corpora``, ``GET|DELETE /corpora/{name}``.
- ``POST|GET /corpora/{name}/documents``, ``GET|DELETE /corpora/{name}/documents/{id}``.
- ``POST /corpora/{name}/duplicates``: JSON report; ``GET /corpora/{name}/report``:
  the same as JSON or ``format=csv`` (text/csv).
- ``POST /corpora/{name}/search``: one text against the corpus.

Domain errors map to HTTP in `ERRORS` only; every error has the uniform body.
The tenant is the gateway's authenticated caller, or ``public`` for direct calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from business_modules.redundancy import (
    CanonicalRule,
    ConflictError,
    InvalidInputError,
    LimitExceededError,
    Method,
    NewDocument,
    NotFoundError,
    analyze,
    quality,
    similarity,
)
from business_modules.redundancy.models import CorpusRecord, DocumentRecord
from business_modules.redundancy.report import report_csv
from business_modules.redundancy.service import RedundancyService
from deployments.common import (
    BodySizeLimitMiddleware,
    ErrorSpec,
    InlineBodyMiddleware,
    RequestIdMiddleware,
    forwarded_caller,
    install_error_handlers,
)
from deployments.common.service_app import STORAGE_ERRORS
from deployments.redundancy import schemas as s
from deployments.redundancy.runtime import RedundancyAppConfig, Runtime

PUBLIC_TENANT = "public"

ERRORS: dict[type[BaseException], ErrorSpec] = {
    NotFoundError: ErrorSpec(404, "not_found"),
    ConflictError: ErrorSpec(409, "conflict"),
    InvalidInputError: ErrorSpec(422, "invalid_input"),
    LimitExceededError: ErrorSpec(413, "limit_exceeded"),
    **STORAGE_ERRORS,
}

CorpusName = Annotated[str, Path(pattern=s.CORPUS_NAME_PATTERN)]
DocId = Annotated[str, Path(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _service(request: Request) -> RedundancyService:
    return await _runtime(request).service()


def _tenant(request: Request) -> str:
    caller = forwarded_caller(request)
    return caller.tenant if caller else PUBLIC_TENANT


Service = Annotated[RedundancyService, Depends(_service)]
Tenant = Annotated[str, Depends(_tenant)]


def _corpus_out(c: CorpusRecord) -> s.CorpusOut:
    return s.CorpusOut(
        id=c.id,
        name=c.name,
        description=c.description,
        document_count=c.document_count,
        revision=c.revision,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def _document_out(d: DocumentRecord, *, with_text: bool) -> s.DocumentOut:
    return s.DocumentOut(
        id=d.id,
        seq=d.seq,
        name=d.name,
        content_hash=d.content_hash,
        word_count=d.word_count,
        char_count=d.char_count,
        metadata=d.metadata,
        created_at=d.created_at,
        text=d.text if with_text else None,
    )


analysis = APIRouter(tags=["analysis"])


@analysis.post("/analyze", response_model=s.AnalyzeOut)
async def analyze_route(body: s.AnalyzeIn) -> Any:
    return asdict(await asyncio.to_thread(analyze, body.content, threshold=body.threshold))


@analysis.post("/similarity", response_model=s.SimilarityOut)
async def similarity_route(body: s.SimilarityIn) -> Any:
    return asdict(await asyncio.to_thread(similarity, body.text1, body.text2, threshold=body.threshold))


@analysis.post("/quality", response_model=s.QualityOut)
async def quality_route(body: s.QualityIn) -> Any:
    return asdict(await asyncio.to_thread(quality, body.content))


ops = APIRouter(tags=["operations"])


@ops.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """200 when the database answers; 503 (uniform body) otherwise."""
    runtime = _runtime(request)
    await runtime.ping()
    return {
        "status": "healthy",
        "service": "redundancy",
        "database": "ok",
        "embedding_model_loaded": runtime.detector.encoder.loaded,
        "timestamp": datetime.now(UTC).isoformat(),
    }


@ops.get("/stats")
async def stats(request: Request, service: Service) -> dict[str, Any]:
    return {**await service.stats(), "requests": dict(_runtime(request).requests)}


corpora = APIRouter(prefix="/corpora", tags=["corpora"])


@corpora.post("", status_code=201, response_model=s.CorpusOut)
async def create_corpus(body: s.CorpusIn, service: Service, tenant: Tenant) -> Any:
    return _corpus_out(await service.create_corpus(tenant=tenant, name=body.name, description=body.description))


@corpora.get("", response_model=s.CorpusList)
async def list_corpora(service: Service, tenant: Tenant, limit: Limit = 100, offset: Offset = 0) -> Any:
    found = await service.list_corpora(tenant=tenant, limit=limit, offset=offset)
    return s.CorpusList(corpora=[_corpus_out(c) for c in found])


@corpora.get("/{name}", response_model=s.CorpusOut)
async def get_corpus(name: CorpusName, service: Service, tenant: Tenant) -> Any:
    return _corpus_out(await service.get_corpus(tenant=tenant, name=name))


@corpora.delete("/{name}", status_code=204)
async def delete_corpus(name: CorpusName, service: Service, tenant: Tenant) -> Response:
    await service.delete_corpus(tenant=tenant, name=name)
    return Response(status_code=204)


@corpora.post("/{name}/documents", status_code=201, response_model=s.DocumentList)
async def add_documents(name: CorpusName, body: s.DocumentsIn, service: Service, tenant: Tenant) -> Any:
    docs = [NewDocument(text=d.text, name=d.name, metadata=d.metadata) for d in body.documents]
    added = await service.add_documents(tenant=tenant, name=name, documents=docs)
    return s.DocumentList(documents=[_document_out(d, with_text=False) for d in added])


@corpora.get("/{name}/documents", response_model=s.DocumentList)
async def list_documents(
    name: CorpusName, service: Service, tenant: Tenant, limit: Limit = 100, offset: Offset = 0
) -> Any:
    found = await service.list_documents(tenant=tenant, name=name, limit=limit, offset=offset)
    return s.DocumentList(documents=[_document_out(d, with_text=False) for d in found])


@corpora.get("/{name}/documents/{doc_id}", response_model=s.DocumentOut)
async def get_document(name: CorpusName, doc_id: DocId, service: Service, tenant: Tenant) -> Any:
    return _document_out(await service.get_document(tenant=tenant, name=name, doc_id=doc_id), with_text=True)


@corpora.delete("/{name}/documents/{doc_id}", status_code=204)
async def remove_document(name: CorpusName, doc_id: DocId, service: Service, tenant: Tenant) -> Response:
    await service.remove_document(tenant=tenant, name=name, doc_id=doc_id)
    return Response(status_code=204)


@corpora.post("/{name}/duplicates")
async def duplicates(name: CorpusName, body: s.DuplicatesIn, service: Service, tenant: Tenant) -> dict[str, Any]:
    """Pairs, clusters and corpus redundancy by one method (JSON report)."""
    return await service.duplicates(
        tenant=tenant,
        name=name,
        method=body.method,
        threshold=body.threshold,
        rule=body.canonical,
        passages=body.passages,
        max_pairs=body.max_pairs,
    )


@corpora.get("/{name}/report", response_model=None)
async def report(
    name: CorpusName,
    service: Service,
    tenant: Tenant,
    method: Method = Method.NEAR,
    threshold: Annotated[float | None, Query(gt=0.0, le=1.0)] = None,
    canonical: CanonicalRule = CanonicalRule.EARLIEST,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    """The duplicate report as JSON, or as CSV (``format=csv``, text/csv)."""
    result = await service.duplicates(tenant=tenant, name=name, method=method, threshold=threshold, rule=canonical)
    if format == "csv":
        return PlainTextResponse(
            report_csv(result),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}-{method.value}.csv"'},
        )
    return JSONResponse(result)


@corpora.post("/{name}/search", response_model=s.SearchOut)
async def search(name: CorpusName, body: s.SearchIn, service: Service, tenant: Tenant) -> Any:
    """Corpus documents that the text duplicates or reuses (passages: a = the text, b = the document)."""
    matches = await service.search(
        tenant=tenant,
        name=name,
        text=body.text,
        method=body.method,
        threshold=body.threshold,
        top_k=body.top_k,
        passages=body.passages,
    )
    names = await service.document_names(tenant=tenant, name=name) if matches else {}
    return s.SearchOut(
        method=body.method,
        threshold=service.detector.threshold(body.method, body.threshold),
        matches=[
            s.MatchOut(
                id=m.doc_id,
                name=names.get(m.doc_id),
                score=m.score,
                method=m.method,
                details=m.details,
                passages=[asdict(p) for p in m.passages],
            )
            for m in matches
        ],
    )


def create_app(config: RedundancyAppConfig | None = None) -> FastAPI:
    """The app of one replica (or of a test): routes, error mapping, middleware."""
    config = config or RedundancyAppConfig()
    runtime = Runtime(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await runtime.close()

    app = FastAPI(title="Blatam content redundancy detector", version="1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, ERRORS)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # noqa: ANN001 - Starlette signature
        response = await call_next(request)
        route = request.scope.get("route")
        if route is not None:
            request.app.state.runtime.requests[f"{request.method} {route.path}"] += 1
        return response

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=False)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    for router in (analysis, ops, corpora):
        app.include_router(router)
    return app
