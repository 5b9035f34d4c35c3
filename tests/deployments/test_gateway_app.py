"""The gateway app in process (no Ray): failures that are awkward to cause on a
shared Serve instance — a database that is gone, a Redis that does not answer,
chunked bodies — plus the request-id header when no Serve proxy echoes it.

`InProcessServices` is a real `ServiceClient`: it forwards through
`call_asgi` to a FastAPI app in this process instead of a Serve handle.
"""

from __future__ import annotations

import asyncio

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from business_modules.settings import load_settings
from deployments.common.errors import install_error_handlers
from deployments.common.forwarding import ForwardedResponse, call_asgi, stream_asgi
from deployments.gateway.app import create_app
from deployments.gateway.services import AppState, ServiceRegistry, ServiceUnavailable
from deployments.gateway.state import GatewayState

SECRET = "in-process-gateway-secret-0123456789-abcdef"


def make_service() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "healthy"}

    @app.post("/echo")
    async def echo(payload: dict) -> dict:
        return payload

    @app.get("/events")
    async def events(count: int = 3) -> StreamingResponse:
        async def body():
            for index in range(count):
                yield f"data: {index}\n\n".encode()
        return StreamingResponse(body(), media_type="text/event-stream")

    return app


class InProcessServices:
    """`ServiceClient` whose only deployed service runs in this process."""

    def __init__(self, apps: dict[str, FastAPI]):
        self.registry = ServiceRegistry({name: name for name in apps})
        self._apps = apps

    async def app_states(self) -> dict[str, AppState]:
        return self.known_app_states()

    def known_app_states(self) -> dict[str, AppState]:
        return {name: AppState("RUNNING") for name in self._apps}

    async def forward(self, service: str, *, method: str, path: str, body: bytes, query, headers, caller,
                      timeout_s: float) -> ForwardedResponse:
        app = self._apps.get(self.registry.app_for(service))
        if app is None:
            raise ServiceUnavailable(service, "not deployed")
        return await call_asgi(app, method=method, path=path, body=body, query=query, headers=headers,
                               caller=caller)

    async def forward_stream(self, service: str, *, method: str, path: str, body: bytes, query, headers, caller,
                             timeout_s: float) -> tuple[ForwardedResponse, AsyncIterator[bytes]]:
        app = self._apps.get(self.registry.app_for(service))
        if app is None:
            raise ServiceUnavailable(service, "not deployed")
        stream = stream_asgi(app, method=method, path=path, body=body, query=query, headers=headers, caller=caller)
        return await stream.__anext__(), stream


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def open_gateway(tmp_path: Path, *, apps: dict[str, FastAPI] | None = None,
                       **overrides) -> tuple[GatewayState, httpx.AsyncClient]:
    settings = load_settings({"blatam_env": "test", "secret_key": SECRET,
                              "database_url": f"sqlite:///{tmp_path / 'gw.db'}", "max_body_bytes": 1024,
                              **overrides})
    state = await GatewayState.open(settings, InProcessServices(apps or {"echo": make_service()}))
    await state.auth.create_user(username="ann", password="a long password", scopes="*")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://gw")
    return state, client


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[GatewayState, httpx.AsyncClient, str]]:
    state, client = await open_gateway(tmp_path)
    key = (await state.auth.create_api_key(username="ann", name="t")).secret
    yield state, client, key
    await client.aclose()
    await state.close()


async def test_request_id_header_is_set_when_no_proxy_does_it(gateway) -> None:
    _, client, _ = gateway
    honoured = await client.get("/ready", headers={"X-Request-ID": "abc-123"})
    assert honoured.headers["x-request-id"] == "abc-123"
    replaced = await client.get("/nope", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.headers["x-request-id"] != "bad id with spaces"
    assert replaced.json()["error"]["request_id"] == replaced.headers["x-request-id"]


async def test_chunked_body_over_the_limit_is_413(gateway) -> None:
    _, client, key = gateway

    async def chunks():
        for _ in range(8):
            yield b"x" * 512

    response = await client.post("/api/v1/echo/echo", content=chunks(), headers={"X-API-Key": key})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    small = await client.post("/api/v1/echo/echo", json={"a": 1}, headers={"X-API-Key": key})
    assert small.status_code == 200 and small.json() == {"a": 1}


async def test_database_gone_means_unhealthy_not_ready_and_503(gateway) -> None:
    state, client, key = gateway
    await state.db.close()
    health = await client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert health.json()["database"]["status"] == "unhealthy"
    ready = await client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    login = await client.post("/api/v1/auth/login", json={"username": "ann", "password": "a long password"})
    assert login.status_code == 503 and login.json()["error"]["code"] == "database_unavailable"
    assert "sqlite" not in login.json()["error"]["message"].lower()


async def test_dead_redis_degrades_health_but_requests_still_pass(tmp_path: Path) -> None:
    state, client = await open_gateway(tmp_path, redis_url=f"redis://127.0.0.1:{closed_port()}/0",
                                       redis_timeout_s=0.2)
    try:
        key = (await state.auth.create_api_key(username="ann", name="t")).secret
        response = await client.post("/api/v1/echo/echo", json={"a": 1}, headers={"X-API-Key": key})
        assert response.status_code == 200 and response.headers["x-ratelimit-limit"] == "100"
        report = (await client.get("/health")).json()
        assert report["status"] == "degraded"
        assert report["redis"] == {"status": "unhealthy", "rate_limits": "memory-fallback"}
        assert report["services"]["echo"]["status"] == "healthy"
    finally:
        await client.aclose()
        await state.close()


async def test_login_attempts_are_rate_limited_per_address(tmp_path: Path) -> None:
    state, client = await open_gateway(tmp_path, rate_limit_login="2/minute")
    try:
        attempts = [await client.post("/api/v1/auth/login", json={"username": "ann", "password": "wrong pass"})
                    for _ in range(3)]
        assert [a.status_code for a in attempts] == [401, 401, 429]
        assert int(attempts[-1].headers["retry-after"]) >= 1
    finally:
        await client.aclose()
        await state.close()


async def test_slow_serve_status_reports_unknown_not_undeployed(tmp_path: Path) -> None:
    state, client = await open_gateway(tmp_path, apps={"echo": make_service(), "llm": make_service()})
    try:
        assert (await client.get("/health")).json()["status"] == "healthy"

        async def stuck() -> dict[str, AppState]:
            await asyncio.sleep(60)
            return {}

        state.services.app_states = stuck  # a controller busy deploying answers late
        state.settings = state.settings.model_copy(update={"health_probe_timeout_s": 0.2})
        report = (await client.get("/health")).json()
        assert report["status"] == "degraded"
        assert set(report["services"]) == {"echo"}  # the services of the last view, not every known name
        assert report["services"]["echo"]["status"] == "unknown"
        assert report["cache"]["status"] == "unknown"
        state.services.known_app_states = dict  # and no view yet (a replica that just started)
        report = (await client.get("/health")).json()
        assert report["services"] == {} and report["cache"]["status"] == "unknown"
        assert report["status"] == "degraded"
    finally:
        await client.aclose()
        await state.close()


async def test_expected_services_that_are_missing_degrade_health(tmp_path: Path) -> None:
    state, client = await open_gateway(tmp_path, gateway_expected_services=["echo", "export"])
    try:
        report = (await client.get("/health")).json()
        assert report["services_from"] == "settings"
        assert set(report["services"]) == {"echo", "export"}  # exactly the list: not redundancy, bul, ...
        assert report["services"]["echo"]["status"] == "healthy"
        assert report["services"]["export"] == {"status": "not_deployed", "app": "export"}
        assert report["cache"]["status"] == "disabled" and "GATEWAY_EXPECTED_SERVICES" in report["cache"]["detail"]
        assert report["status"] == "degraded"
    finally:
        await client.aclose()
        await state.close()


def test_expected_services_must_be_routable() -> None:
    from deployments.gateway.configured import check_expected

    check_expected(ServiceRegistry({"echo": "test_echo"}), ["echo", "llm"])
    with pytest.raises(ValueError, match="nosuch"):
        check_expected(ServiceRegistry(), ["redundancy", "nosuch"])


async def test_streamed_service_passes_events_and_normalises_the_rest(tmp_path: Path) -> None:
    state, client = await open_gateway(tmp_path, gateway_stream_services=["echo"])
    try:
        key = (await state.auth.create_api_key(username="ann", name="t")).secret
        events = await client.get("/api/v1/echo/events", params={"count": 4}, headers={"X-API-Key": key})
        assert events.status_code == 200 and events.headers["content-type"].startswith("text/event-stream")
        assert events.text == "".join(f"data: {i}\n\n" for i in range(4))
        assert events.headers["x-ratelimit-limit"] == "100" and "content-length" not in events.headers
        echoed = await client.post("/api/v1/echo/echo", json={"a": 1}, headers={"X-API-Key": key})
        assert echoed.status_code == 200 and echoed.json() == {"a": 1}  # not an event stream: answered whole
        assert echoed.headers["content-length"] == str(len(echoed.content))
        invalid = await client.post("/api/v1/echo/echo", content=b"not json", headers={"X-API-Key": key,
                                                                                        "content-type": "application/json"})
        assert invalid.status_code == 400 and invalid.json()["error"]["request_id"] == invalid.headers["x-request-id"]
        missing = await client.get("/api/v1/echo/nope", headers={"X-API-Key": key})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    finally:
        await client.aclose()
        await state.close()


async def test_api_key_is_accepted_as_a_bearer_credential(gateway) -> None:
    _, client, key = gateway
    as_bearer = await client.post("/api/v1/echo/echo", json={"a": 2}, headers={"Authorization": f"Bearer {key}"})
    assert as_bearer.status_code == 200 and as_bearer.json() == {"a": 2}
    wrong = await client.post("/api/v1/echo/echo", json={"a": 2}, headers={"Authorization": f"Bearer {key[:-1]}x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"]


async def test_an_openai_answer_with_no_head_within_its_budget_is_a_504_not_a_hang(tmp_path: Path) -> None:
    """Found by the fault drill: a /v1 stream whose model call never started held its client until it left."""
    import asyncio
    import time

    class SilentFront:  # the app never starts a response, as that lost call did
        async def app(self):
            async def silent(scope, receive, send):
                await asyncio.Event().wait()
            return silent

    settings = load_settings({"blatam_env": "test", "secret_key": SECRET, "database_url": f"sqlite:///{tmp_path / 'gw.db'}",
                              "gateway_llm_timeout_s": 0.5})
    state = await GatewayState.open(settings, InProcessServices({"echo": make_service()}), openai_front=SilentFront())
    await state.auth.create_user(username="ann", password="a long password", scopes="*")
    key = (await state.auth.create_api_key(username="ann", name="t")).secret
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://gw") as client:
        started = time.monotonic()
        answer = await client.post("/v1/completions", json={"prompt": "hi", "stream": True},
                                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    await state.close()
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "service_timeout", answer.text
    assert time.monotonic() - started < 10
