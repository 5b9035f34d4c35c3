"""The proxy's bound on a response's head, and Serve's hint headers dropped from clients' requests.

Found by the fault drill (a gateway replica killed under load): Serve's router
put one request back in its queue after the dying replica refused it and never
routed it again, and its client waited 90 s for nothing (the proxy log shows
the request id, then only the client's disconnect). `ProxyFailureMiddleware`
now answers such a request 503 with Retry-After once no response has started
within the deadline; a stream whose head came in time is never cut.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployments.common.proxy_failures import (DEFAULT_HEAD_TIMEOUT_S, HEAD_TIMEOUT_ENV, ProxyFailureMiddleware,
                                               head_timeout_from_env)
from deployments.common.proxy_hints import ProxyHintsMiddleware

ROOT = Path(__file__).resolve().parents[2]


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy")


async def test_a_response_that_does_not_start_in_time_is_a_503_and_the_request_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def lost(scope, receive, send):  # what a request Serve's router lost looks like from the proxy
        scope["headers"].append((b"x-request-id", b"lost-1"))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with _client(ProxyFailureMiddleware(lost, head_timeout_s=0.3)) as http:
        answer = await asyncio.wait_for(http.post("/api/v1/redundancy/analyze", json={}), timeout=10)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": {"code": "service_unavailable", "request_id": "lost-1",
                                       "message": "No response began within 0.3 s; retry."}}
    assert cancelled.is_set()


async def test_a_head_in_time_is_never_cut_however_long_the_body_and_no_bound_waits_forever() -> None:
    async def slow_body(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": f"{i};".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    async def slow_head(scope, receive, send):
        await asyncio.sleep(0.5)
        await slow_body(scope, receive, send)

    async with _client(ProxyFailureMiddleware(slow_body, head_timeout_s=0.3)) as http:
        answer = await http.get("/stream")
    assert (answer.status_code, answer.text) == (200, "0;1;2;end")
    async with _client(ProxyFailureMiddleware(slow_head, head_timeout_s=None)) as http:
        answer = await http.get("/slow")
    assert (answer.status_code, answer.text) == (200, "0;1;2;end")


def test_the_deadline_comes_from_the_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HEAD_TIMEOUT_ENV, raising=False)
    assert head_timeout_from_env() == DEFAULT_HEAD_TIMEOUT_S > 600  # above gateway_llm_timeout_s's default
    for raw, expected in (("45", 45.0), ("0", None), ("-1", None), ("soon", DEFAULT_HEAD_TIMEOUT_S)):
        monkeypatch.setenv(HEAD_TIMEOUT_ENV, raw)
        assert head_timeout_from_env() == expected, raw


async def test_serves_hint_headers_never_reach_serve_other_headers_do() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope, receive, send):
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with _client(ProxyHintsMiddleware(app)) as http:
        await http.get("/", headers={"X-Request-Timeout-Seconds": "0", "x-request-disconnect-disabled": "?1",
                                     "x-request-id": "keep-me"})
    names = [name for name, _ in seen[0]]
    assert b"x-request-timeout-seconds" not in names and b"x-request-disconnect-disabled" not in names
    assert (b"x-request-id", b"keep-me") in seen[0]


@pytest.mark.ray
@pytest.mark.slow
def test_on_serves_real_proxy_a_silent_request_is_answered_and_cancelled_a_stream_is_whole(tmp_path: Path) -> None:
    """The path a user takes: Serve's proxy with our middlewares and a 2-s deadline, in a cluster of its own (the
    deadline is read at the proxy's start, so the shared test instance keeps the default)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "tests.deployments.proxy_head_probe", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    silent = result["silent"]
    assert silent["status"] == 503 and silent["retry_after"] == "1", silent
    assert silent["body"]["error"] == {"code": "service_unavailable", "request_id": "head-probe-1",
                                       "message": "No response began within 2 s; retry."}
    assert 2.0 <= silent["seconds"] < 10, silent
    cancelled_at = float((tmp_path / "cancelled").read_text())  # the replica saw its request cancelled
    assert cancelled_at - silent["sent_at"] < 10
    assert result["stream"]["status"] == 200 and result["stream"]["seconds"] >= 4.0  # longer than the deadline
    assert result["stream"]["body"] == "".join(f"data: {i}\n\n" for i in range(4))
    # The client asked for a 0.2-s timeout and no cancellation on disconnect: both dropped, the 1-s answer arrives.
    assert result["hint"] == {"status": 200, "body": '{"ok":true}'}
