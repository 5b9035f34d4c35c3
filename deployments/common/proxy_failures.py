"""Serve's proxy's own failure answers become a clean, retryable 503 in the uniform body.

When the replica serving a request dies under it (a gateway replica killed
or restarted), the client gets ``500 Internal Server Error`` in plain text.
Nothing the client sent was acknowledged, so the honest answer is "retry":
tests/faults saw such 500s in a gateway-replica kill under load.

Where that 500 comes from matters. Ray 2.60's proxy sends *nothing* for an
error other than 408/429/503 (``send_http_response_on_exception``): its ASGI
app returns without starting a response, and uvicorn, outside every
middleware, writes its own plain-text 500. So this middleware (installed in
the proxy next to the request-id one) answers for the proxy when the app
returns, or raises, before a response started: 503 with ``Retry-After`` and
``{"error": {"code", "message", "request_id"}}``. It also rewrites a
plain-text 500 that does come through (every answer of our own apps is JSON,
so one can only be the proxy's). Any other response passes untouched.
"""

from __future__ import annotations

import json
from typing import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


RETRY_AFTER_S = 1


def _is_proxy_failure(message: Message) -> bool:
    if message.get("status") != 500:
        return False
    content_type = next((v for k, v in message.get("headers", ()) if k.lower() == b"content-type"), b"")
    return b"json" not in content_type


class ProxyFailureMiddleware:
    """Pure ASGI middleware for Serve's proxy (see the module docstring)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = False

        async def send_checked(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                if _is_proxy_failure(message):
                    replaced = True
                    await _send_retry(send, message.get("headers", ()))
                    return
            if replaced:  # the proxy's own text body: already answered
                return
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except Exception:
            if started:
                raise
            await _send_retry(send, (), _scope_request_id(scope))
            return
        if not started:  # the proxy gave up without a word; uvicorn would send a plain-text 500
            await _send_retry(send, (), _scope_request_id(scope))


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-request-id"), None)


def _scope_request_id(scope: Scope) -> str | None:
    """The request's id as Serve's RequestIdMiddleware left it in the (shared) scope."""
    return _request_id(scope.get("headers", ()))


async def _send_retry(send: Send, headers: Iterable[tuple[bytes, bytes]], request_id: str | None = None) -> None:
    """The 503 + Retry-After answer with the uniform body, keeping `headers` but the content ones."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    sent = _request_id(kept)
    if sent is None and request_id is not None:
        kept.append((b"x-request-id", request_id.encode("latin-1")))
    request_id = sent or request_id
    # The uniform body (deployments.common.errors.error_body), spelled out: that module reaches the
    # request-id one, which installs this middleware, so importing it here would close a circle.
    body = json.dumps({"error": {"code": "service_unavailable", "message": "The service replica serving "
                                 "this request went away; retry.", "request_id": request_id}}).encode()
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
             (b"retry-after", str(RETRY_AFTER_S).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": kept})
    await send({"type": "http.response.body", "body": body, "more_body": False})
