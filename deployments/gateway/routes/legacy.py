"""``POST /api/v1/gateway/route``: the original Integration System's generic route.

Body ``{target_system, endpoint, method, data, headers}`` with the original
target names (``content_redundancy``, ``bul``, ``gamma_app``,
``business_agents``, ``export_ia``); the answer wraps the service's response
in ``{request_id, target_system, endpoint, method, status_code, response,
processing_time, timestamp}``. An unknown target is 400, a service that is
down 503, as in the original.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.common.forwarding import ForwardedResponse
from deployments.common.request_id import get_request_id
from deployments.gateway.deps import PrincipalDep, StateDep
from deployments.gateway.errors import BadEndpoint, UnknownTargetSystem, rate_limit_headers
from deployments.gateway.forward import forward
from deployments.gateway.services import LEGACY_TARGETS

router = APIRouter(prefix="/api/v1/gateway", tags=["gateway"])

_PASSED_HEADERS = {"accept", "accept-language", "content-type"}


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_system: str = Field(description=f"One of {', '.join(LEGACY_TARGETS)}.", max_length=64)
    endpoint: str = Field(min_length=1, max_length=2048, description="Path inside the service, e.g. /analyze.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    data: dict[str, Any] | list[Any] | None = Field(None, description="JSON body (query parameters for GET/DELETE).")
    headers: dict[str, str] | None = Field(None, description="Only Accept, Accept-Language, Content-Type are passed.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class RouteOut(BaseModel):
    request_id: str | None
    target_system: str
    endpoint: str
    method: str
    status_code: int
    response: Any
    processing_time: float = Field(description="Seconds spent in the gateway and the service.")
    timestamp: str


def _split_endpoint(endpoint: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(endpoint)
    if (parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//")
            or ".." in parts.path.split("/") or any(ord(c) < 33 for c in endpoint)):
        raise BadEndpoint(f"endpoint must be an absolute path inside the service such as /analyze, got {endpoint!r}")
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


def _decode(result: ForwardedResponse) -> Any:
    content_type = result.header("content-type") or ""
    if not result.body:
        return None
    if "json" in content_type:
        try:
            return json.loads(result.body)
        except ValueError:
            pass
    if content_type.startswith("text/") or "json" in content_type:
        return result.body.decode("utf-8", "replace")
    return {"content_type": content_type, "content_base64": base64.b64encode(result.body).decode()}


def _query_from_data(data: Any) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        raise BadEndpoint("data must be an object of query parameters for GET and DELETE")
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, item if isinstance(item, str) else json.dumps(item)))
    return pairs


@router.post("/route", response_model=RouteOut, summary="Route a call to a service (original Integration System)")
async def route(body: RouteIn, request: Request, principal: PrincipalDep, state: StateDep) -> JSONResponse:
    started = time.perf_counter()
    service = LEGACY_TARGETS.get(body.target_system)
    if service is None:
        raise UnknownTargetSystem(
            f"Unknown target_system {body.target_system!r}; known: {', '.join(sorted(LEGACY_TARGETS))}")
    path, query = _split_endpoint(body.endpoint)
    headers = {k.lower(): v for k, v in (body.headers or {}).items() if k.lower() in _PASSED_HEADERS}
    payload = b""
    if body.data is not None:
        if body.method in ("GET", "DELETE"):
            query += _query_from_data(body.data)
        else:
            payload = json.dumps(body.data).encode()
            headers["content-type"] = "application/json"
    result, _, decision = await forward(state, request, principal, service, method=body.method, path=path,
                                        body=payload, query=query, headers=headers)
    out = RouteOut(
        request_id=get_request_id(request), target_system=body.target_system, endpoint=body.endpoint,
        method=body.method, status_code=result.status_code, response=_decode(result),
        processing_time=round(time.perf_counter() - started, 6), timestamp=datetime.now(UTC).isoformat(),
    )
    return JSONResponse(out.model_dump(), headers=rate_limit_headers(decision))
