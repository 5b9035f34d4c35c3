"""Serve's per-request hint headers are for a trusted load balancer, never for clients.

Ray 2.60's proxy reads two request headers meant for the HAProxy it can run
in front of itself (``ray/serve/_private/http_util.py``):
``x-request-timeout-seconds`` overrides the proxy's timeout for that request
(``0`` disables it), and ``x-request-disconnect-disabled: ?1`` keeps the
request running after its client has gone. Sent by a client straight to our
proxy they would let anyone switch off the limits the operator set, or leave
work running (an LLM generating for nobody) by connecting and leaving. We run
no such balancer, so `ProxyHintsMiddleware`, installed in the proxy before
Serve reads them, drops both from every request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

SERVE_HINT_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
"""Ray's ``SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER`` and ``SERVE_HTTP_REQUEST_DISCONNECT_DISABLED_HEADER``."""


class ProxyHintsMiddleware:
    """Pure ASGI middleware for Serve's proxy: remove `SERVE_HINT_HEADERS` from the request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and any(name in SERVE_HINT_HEADERS for name, _ in scope["headers"]):
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name not in SERVE_HINT_HEADERS]
        await self.app(scope, receive, send)
