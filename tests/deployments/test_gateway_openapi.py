"""The gateway's merged OpenAPI document and its schema cache, without Ray.

The merge is pure; the cache is exercised with a real `ServiceClient`
(`InProcessServices`: FastAPI apps run through the forwarding protocol in
this process) and an injected clock. The same on a real Serve instance is in
tests/deployments/test_gateway.py.

NOTE: no ``from __future__ import annotations``: FastAPI must see the body
models built inside `service_with_error_model`, not their names.
"""

import asyncio
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydantic import create_model

from deployments.gateway.openapi_merge import merge_service_schemas
from deployments.gateway.service_schemas import RETRY_AFTER_FAILURE_S, ServiceSchemas
from tests.deployments.test_gateway_app import InProcessServices, make_service, open_gateway


def service_with_error_model(field: str) -> FastAPI:
    """A service whose route takes a body and answers 400 with its own model named ``Error``."""
    app = FastAPI(title=f"svc-{field}")
    error = create_model("Error", **{field: (str, ...)})
    body_model = create_model("Body", value=(int, ...))

    @app.post("/do", responses={400: {"model": error}})
    async def do(body: body_model) -> dict:  # type: ignore[valid-type]  (a model built at run time)
        return {"value": body.value}

    return app


def unresolved_refs(document: dict) -> list[str]:
    """The local ``$ref`` values of `document` that point at nothing."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                target = document
                for part in ref[2:].split("/"):
                    target = target.get(part) if isinstance(target, dict) else None
                if target is None:
                    found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


GATEWAY = {
    "openapi": "3.1.0",
    "info": {"title": "gw", "version": "1"},
    "paths": {"/api/v1/a/do": {"get": {"operationId": "gateway_own", "responses": {}}}},
    "components": {"securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"},
                                       "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
}


def test_merge_puts_service_routes_under_gateway_paths_with_namespaced_models() -> None:
    a = service_with_error_model("reason").openapi()
    b = service_with_error_model("cause").openapi()
    merged = merge_service_schemas(GATEWAY, {"a": a, "b": b})

    operation = merged["paths"]["/api/v1/b/do"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/b.Body"}
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/b.Error"}
    assert operation["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    assert operation["tags"] == ["b"] and operation["operationId"].startswith("b_")
    schemas = merged["components"]["schemas"]
    assert set(schemas["a.Error"]["properties"]) == {"reason"} and set(schemas["b.Error"]["properties"]) == {"cause"}
    assert "Error" not in schemas and "b.HTTPValidationError" in schemas
    # a ref inside a component points at the namespaced component too
    assert schemas["b.HTTPValidationError"]["properties"]["detail"]["items"] == {
        "$ref": "#/components/schemas/b.ValidationError"}
    # the gateway's own path wins; the inputs are left as they were
    assert merged["paths"]["/api/v1/a/do"] == GATEWAY["paths"]["/api/v1/a/do"]
    assert "b.Body" not in str(b) and "/api/v1/b/do" not in GATEWAY["paths"]
    assert unresolved_refs(merged) == [] and unresolved_refs(b) == []


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingServices(InProcessServices):
    """In-process services that count the schema fetches and can be taken down."""

    def __init__(self, apps: dict[str, FastAPI]):
        super().__init__(apps)
        self.fetches = 0
        self.down: set[str] = set()

    async def forward(self, service: str, **call):
        if call["path"] == "/openapi.json":
            self.fetches += 1
        if service in self.down:
            from deployments.gateway.services import ServiceUnavailable

            raise ServiceUnavailable(service, "taken down by the test")
        return await super().forward(service, **call)


async def test_schemas_are_reused_for_the_ttl_and_the_last_good_one_outlives_a_failure() -> None:
    clock = Clock()
    services = CountingServices({"echo": make_service()})
    schemas = ServiceSchemas(services, ttl_s=60, timeout_s=1, clock=clock)

    first, second = await asyncio.gather(schemas.get("echo"), schemas.get("echo"))
    assert first is second and "/echo" in first["paths"] and services.fetches == 1  # one fetch for both callers
    clock.now = 59
    assert await schemas.get("echo") is first and services.fetches == 1
    clock.now = 61
    services.down.add("echo")
    assert await schemas.get("echo") is first and services.fetches == 2  # failed: the last good one stays
    clock.now = 61 + RETRY_AFTER_FAILURE_S - 0.1
    assert await schemas.get("echo") is first and services.fetches == 2  # no retry storm
    clock.now = 61 + RETRY_AFTER_FAILURE_S
    services.down.clear()
    assert (await schemas.get("echo"))["paths"] == first["paths"] and services.fetches == 3
    assert await schemas.get("nosuch") is None


def stuck_service() -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.get("/openapi.json")
    async def never() -> dict:
        await asyncio.sleep(60)
        return {}

    return app


def broken_service() -> FastAPI:
    app = FastAPI(openapi_url=None)

    @app.get("/openapi.json")
    async def broken() -> dict:
        return {"not": "a schema"}

    return app


async def test_openapi_answers_in_time_without_the_services_that_fail(tmp_path: Path) -> None:
    state, client = await open_gateway(
        tmp_path, apps={"echo": make_service(), "stuck": stuck_service(), "broken": broken_service()},
        gateway_openapi_timeout_s=0.5)
    try:
        started = time.perf_counter()
        response = await client.get("/openapi.json")
        assert response.status_code == 200 and time.perf_counter() - started < 5
        paths = response.json()["paths"]
        assert "/api/v1/echo/echo" in paths and "/api/v1/{service}/{path}" in paths
        assert not [p for p in paths if p.startswith(("/api/v1/stuck/", "/api/v1/broken/"))]
    finally:
        await client.aclose()
        await state.close()


@pytest.mark.parametrize("expected", [None, ["echo"]])
async def test_openapi_documents_only_configured_services(tmp_path: Path, expected) -> None:
    state, client = await open_gateway(tmp_path, apps={"echo": make_service(), "other": make_service()},
                                       gateway_expected_services=expected)
    try:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "/api/v1/echo/echo" in paths
        assert ("/api/v1/other/echo" in paths) is (expected is None)
        assert not [p for p in paths if p.startswith(("/api/v1/bul/", "/api/v1/redundancy/"))]
    finally:
        await client.aclose()
        await state.close()
