"""A request body sent with the request through Serve's proxy (`deployments.common.inline_body`).

The middlewares alone on ASGI messages, then through the test Serve
instance's real proxy (which runs `proxy_middlewares`): the body arrives
inline when it has a length up to the bound, by Serve's call back otherwise
or to an app without the replica side, and is the same bytes either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from deployments.common.inline_body import (
    INLINE_MAX_BYTES, SCOPE_KEY, InlineBodyMiddleware, ProxyInlineBodyMiddleware,
)


def _scope(body_length: int | None, method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if body_length is not None:
        headers.append((b"content-length", str(body_length).encode()))
    return {"type": "http", "method": method, "path": "/", "headers": headers}


def _receiver(messages: list[dict[str, Any]]):
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a client that stays: nothing more arrives
        raise AssertionError("unreachable")
    return receive


async def _through_proxy_side(scope: dict[str, Any], messages: list[dict[str, Any]], reads: int,
                              max_bytes: int = INLINE_MAX_BYTES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the app behind `ProxyInlineBodyMiddleware` sees: its scope and its first ``reads`` messages."""
    seen: dict[str, Any] = {}

    async def app(inner_scope, receive, send) -> None:
        seen["scope"] = inner_scope
        seen["messages"] = [await receive() for _ in range(reads)]

    await ProxyInlineBodyMiddleware(app, max_bytes=max_bytes)(scope, _receiver(messages), None)
    return seen["scope"], seen["messages"]


def test_proxy_side_inlines_a_body_of_known_length_and_still_queues_it() -> None:
    parts = [{"type": "http.request", "body": b'{"a":', "more_body": True},
             {"type": "http.request", "body": b" 1}", "more_body": False},
             {"type": "http.disconnect"}]
    scope, messages = asyncio.run(_through_proxy_side(_scope(8), parts, reads=3))
    assert scope[SCOPE_KEY] == b'{"a": 1}'
    assert messages == parts  # Serve's queue gets every message, the client's disconnect after the body


@pytest.mark.parametrize("length", [None, 0, INLINE_MAX_BYTES + 1])
def test_proxy_side_leaves_chunked_empty_and_long_bodies_alone(length: int | None) -> None:
    parts = [{"type": "http.request", "body": b"x", "more_body": False}]
    scope, messages = asyncio.run(_through_proxy_side(_scope(length), parts, reads=1))
    assert SCOPE_KEY not in scope
    assert messages == parts


def test_proxy_side_ignores_a_bad_content_length() -> None:
    scope = _scope(None)
    scope["headers"].append((b"content-length", b"-5"))
    out, _ = asyncio.run(_through_proxy_side(scope, [{"type": "http.request", "body": b"", "more_body": False}], 1))
    assert SCOPE_KEY not in out


def test_proxy_side_client_leaving_mid_body_inlines_nothing() -> None:
    parts = [{"type": "http.request", "body": b"half", "more_body": True}, {"type": "http.disconnect"}]
    scope, messages = asyncio.run(_through_proxy_side(_scope(100), parts, reads=2))
    assert SCOPE_KEY not in scope
    assert messages == parts


async def _replica_side(scope: dict[str, Any], messages: list[dict[str, Any]], reads: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def app(inner_scope, receive, send) -> None:
        for _ in range(reads):
            seen.append(await receive())

    await InlineBodyMiddleware(app)(scope, _receiver(messages), None)
    return seen


def test_replica_side_answers_from_the_scope_then_only_news() -> None:
    scope = {**_scope(4), SCOPE_KEY: b"body"}
    queued = [{"type": "http.request", "body": b"bo", "more_body": True},
              {"type": "http.request", "body": b"dy", "more_body": False}, {"type": "http.disconnect"}]
    seen = asyncio.run(_replica_side(scope, queued, reads=2))
    assert seen == [{"type": "http.request", "body": b"body", "more_body": False}, {"type": "http.disconnect"}]


def test_replica_side_without_an_inline_body_passes_receive_through() -> None:
    queued = [{"type": "http.request", "body": b"body", "more_body": False}]
    assert asyncio.run(_replica_side(_scope(4), queued, reads=1)) == queued


# --- through Serve's proxy ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_url(serve_instance) -> str:
    from tests.deployments.conftest import run_app
    from tests.deployments.inline_body_probe import InlineProbe, PlainProbe

    run_app(InlineProbe.bind(), name="inline-probe", route_prefix="/inline-probe")
    run_app(PlainProbe.bind(), name="plain-probe", route_prefix="/plain-probe")
    return serve_instance.base_url


@pytest.mark.parametrize(("size", "chunked", "inline"), [
    (10, False, True),
    (INLINE_MAX_BYTES, False, True),
    (INLINE_MAX_BYTES + 1, False, False),  # the old path: Serve's call back
    (10, True, False),  # no length: the proxy does not buffer it
])
def test_body_reaches_the_replica(probe_url: str, size: int, chunked: bool, inline: bool) -> None:
    body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    content = iter([body]) if chunked else body
    response = httpx.post(f"{probe_url}/inline-probe/body", content=content, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"inline": inline, "length": size, "head": body[:16].decode()}


def test_an_app_without_the_replica_side_still_gets_the_body(probe_url: str) -> None:
    response = httpx.post(f"{probe_url}/plain-probe/body", content=b"x" * 1000, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["length"] == 1000


def test_a_streamed_answer_goes_on_after_an_inline_body(probe_url: str) -> None:
    """The body came inline; the stream's later receive (Starlette listens for the disconnect) must not get it again."""
    with httpx.stream("POST", f"{probe_url}/inline-probe/stream", content=b"y" * 50, timeout=60) as response:
        assert response.status_code == 200
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 5:
                break
    assert lines == [f"{index}:50" for index in range(5)]
