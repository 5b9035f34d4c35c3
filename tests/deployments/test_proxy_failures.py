"""The proxy's own plain-text 500 (a replica died under the request) becomes a retryable 503; nothing else changes."""

from __future__ import annotations

import os

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from deployments.common.proxy_failures import ProxyFailureMiddleware


def _app() -> ProxyFailureMiddleware:
    async def died(request):  # what Serve's proxy sends when the replica is gone
        return PlainTextResponse("Internal Server Error", status_code=500, headers={"x-request-id": "r-1"})

    async def ours(request):  # an app's own 500 has the uniform JSON body: left as it is
        return JSONResponse({"error": {"code": "internal_error", "message": "m", "request_id": "r-2"}}, 500)

    async def fine(request):
        return PlainTextResponse("ok")

    return ProxyFailureMiddleware(Starlette(routes=[Route("/died", died), Route("/ours", ours), Route("/fine", fine)]))


async def test_a_plain_text_500_becomes_a_503_with_retry_after_and_the_uniform_body() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://proxy") as http:
        died = await http.get("/died")
        assert died.status_code == 503 and died.headers["retry-after"] == "1"
        assert died.json() == {"error": {"code": "service_unavailable", "request_id": "r-1",
                                         "message": "The service replica serving this request went away; retry."}}
        ours = await http.get("/ours")
        assert ours.status_code == 500 and ours.json()["error"]["code"] == "internal_error"
        fine = await http.get("/fine")
        assert fine.status_code == 200 and fine.text == "ok"


async def test_an_app_that_returns_or_raises_without_answering_gets_the_503_not_uvicorns_500() -> None:
    """Ray's proxy sends nothing for a dead replica (uvicorn then writes a plain-text 500): answer for it."""
    async def silent(scope, receive, send):
        scope["headers"].append((b"x-request-id", b"r-3"))  # as Serve's RequestIdMiddleware leaves it

    async def raising(scope, receive, send):
        raise RuntimeError("replica died")

    for inner, request_id in ((silent, "r-3"), (raising, None)):
        transport = httpx.ASGITransport(app=ProxyFailureMiddleware(inner))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as http:
            answer = await http.post("/api/v1/export", json={})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "service_unavailable"
        assert answer.json()["error"]["request_id"] == request_id


@pytest.mark.ray
@pytest.mark.slow
def test_a_replica_dying_under_a_request_is_a_retryable_503_through_the_real_proxy(serve_instance) -> None:
    """The path a user takes: Serve's proxy with serve_config.yaml's proxy callback, a replica that dies mid-request."""
    from ray import serve

    from tests.deployments.conftest import run_app

    @serve.deployment(max_ongoing_requests=4, health_check_period_s=1)
    class DiesOnRequest:
        async def __call__(self, request) -> dict:
            if request.url.path.endswith("/die"):
                os._exit(1)
            return {"ok": True}

    run_app(DiesOnRequest.bind(), name="proxy-dies", route_prefix="/proxy-dies")
    try:
        assert httpx.get(f"{serve_instance.base_url}/proxy-dies/alive", timeout=30).json() == {"ok": True}
        answer = httpx.get(f"{serve_instance.base_url}/proxy-dies/die", timeout=60,
                           headers={"x-request-id": "dying-request-1"})
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1" and answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": {"code": "service_unavailable", "request_id": "dying-request-1",
                                           "message": "The service replica serving this request went away; retry."}}
    finally:
        serve.delete("proxy-dies")


@pytest.mark.ray
@pytest.mark.slow
def test_a_replica_killed_mid_stream_ends_the_stream_promptly_through_the_real_proxy(serve_instance) -> None:
    """Killed from outside (as the fault test and a node loss do) while it streams: the client sees its stream
    end within seconds, never a connection that stays open with nothing coming."""
    import asyncio
    import threading
    import time

    import ray
    from ray import serve
    from starlette.responses import StreamingResponse

    from tests.deployments.conftest import run_app

    @serve.deployment(max_ongoing_requests=4, health_check_period_s=1)
    class SlowStream:
        async def __call__(self, request):
            async def chunks():
                for i in range(600):
                    yield f"data: {i}\n\n"
                    await asyncio.sleep(0.1)
            return StreamingResponse(chunks(), media_type="text/event-stream")

    run_app(SlowStream.bind(), name="proxy-stream", route_prefix="/proxy-stream")
    try:
        replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                       if "SlowStream" in a["name"] and a["namespace"] == "serve")
        got: list[str] = []
        ended: dict[str, float] = {}

        def read() -> None:
            try:
                with httpx.stream("GET", f"{serve_instance.base_url}/proxy-stream/", timeout=httpx.Timeout(60)) as r:
                    for line in r.iter_lines():
                        if line:
                            got.append(line)
            except httpx.HTTPError as exc:
                got.append(f"error: {type(exc).__name__}")
            ended["at"] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) >= 5, got
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(replica["name"], namespace="serve"), no_restart=True)
        reader.join(timeout=90)
        assert "at" in ended, "the stream was still open 90 s after its replica was killed"
        print(f"stream ended {ended['at'] - killed_at:.1f} s after the kill; last: {got[-1]!r}")
        assert ended["at"] - killed_at < 30
    finally:
        serve.delete("proxy-stream")
