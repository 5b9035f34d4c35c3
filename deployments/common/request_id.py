"""Request ids: one per request, honouring a sane incoming ``X-Request-ID``.

`RequestIdMiddleware` stores the id in ``request.state.request_id`` (read it
with `get_request_id`) and, when ``echo_header`` is true, sets
``X-Request-ID`` on the response. Behind Ray Serve's HTTP proxy leave
``echo_header`` false: the proxy already echoes the request's id on every
response (it generates a uuid when the client sent none), and a second header
would be appended, not replace it.

NOTE: the proxy echoes whatever the client sent, even an id this middleware
refuses as insane (too long, odd characters); the body and logs then carry a
fresh id. Only the direct (non-Serve) path can fix the header.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SANE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """`value` when it is a reasonable id (1-128 safe characters), else None."""
    return value if value is not None and _SANE.match(value) else None


def get_request_id(conn: HTTPConnection) -> str | None:
    """The id `RequestIdMiddleware` assigned to this request."""
    return getattr(conn.state, "request_id", None)


class RequestIdMiddleware:
    """Pure ASGI middleware assigning ``scope["state"]["request_id"]``."""

    def __init__(self, app: ASGIApp, *, echo_header: bool = True):
        self.app = app
        self.echo_header = echo_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = sane_request_id(incoming) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        if not self.echo_header:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
