"""``GET /health`` (every component) and ``GET /ready`` (can this replica serve?)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from business_modules.storage import StorageError
from deployments.common.errors import error_response
from deployments.common.request_id import get_request_id
from deployments.gateway.deps import StateDep
from deployments.gateway.health import UNHEALTHY, collect_health

router = APIRouter(tags=["health"])


@router.get("/health", summary="Status of the configured services, the cache, the database and Redis")
async def health(state: StateDep) -> JSONResponse:
    report = await collect_health(state)
    return JSONResponse(report, status_code=503 if report["status"] == UNHEALTHY else 200)


@router.get("/ready", summary="200 when this gateway replica can serve requests")
async def ready(request: Request, state: StateDep) -> JSONResponse:
    try:
        await state.db.ping(timeout_s=state.settings.health_probe_timeout_s)
    except StorageError as exc:
        return error_response(503, "not_ready", f"Database not reachable: {exc}"[:300], get_request_id(request),
                              headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})
