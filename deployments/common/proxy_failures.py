"""Serve's proxy's own failure answers become a clean, retryable 503 in the uniform body.

When the replica serving a request dies under it (a gateway replica killed
or restarted), Serve's HTTP proxy answers ``500 Internal Server Error`` in
plain text. Nothing the client sent was acknowledged, so the honest answer
is "retry": tests/faults saw one such 500 in a gateway-replica kill under
load. Every answer of our own apps is JSON (the uniform error body, or
OpenAI's), so a plain-text 500 can only be the proxy's: this middleware
(installed in the proxy next to the request-id one) rewrites exactly that
into 503 with ``Retry-After`` and ``{"error": {"code", "message",
"request_id"}}``. Any other response passes untouched.
"""

from __future__ import annotations

import json

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
        replaced = False

        async def send_checked(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and _is_proxy_failure(message):
                replaced = True
                request_id = next((v.decode("latin-1") for k, v in message.get("headers", ())
                                   if k.lower() == b"x-request-id"), None)
                # The uniform body (deployments.common.errors.error_body), spelled out: that module reaches the
                # request-id one, which installs this middleware, so importing it here would close a circle.
                body = json.dumps({"error": {"code": "service_unavailable", "message": "The service replica serving "
                                             "this request went away; retry.", "request_id": request_id}}).encode()
                headers = [(k, v) for k, v in message.get("headers", ())
                           if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode())]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if replaced:  # the proxy's own text body: already answered
                return
            await send(message)

        await self.app(scope, receive, send_checked)
