"""Request ids: one per request, honouring a sane incoming ``X-Request-ID``.

A sane id is 1-128 characters of ``A-Z a-z 0-9 . _ : @ / + = -``: bounded, and
harmless in a header, a log line or an HTML page. Anything else (5,000
characters, ``<script>``, spaces) is replaced by a fresh uuid.

`RequestIdMiddleware` stores the id in ``request.state.request_id`` (read it
with `get_request_id`) and, when ``echo_header`` is true, sets
``X-Request-ID`` on the response. Behind Ray Serve's HTTP proxy leave
``echo_header`` false: the proxy itself echoes the request's id on every
response, and a second header would be appended, not replace it.

NOTE: Serve 2.60's proxy wraps its ASGI app in its own ``RequestIdMiddleware``
(``ray/serve/_private/http_util.py``): it reads ``x-request-id`` from the
request as the client sent it (or adds a uuid when absent), passes it to the
replica in the request's headers and *appends* it to the response headers, in
the proxy process, after the replica answered. A replica therefore cannot
correct that header. What can: a middleware that runs in the proxy before
Serve's, which Serve installs from the callback named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (read by the proxy at start-up).
`proxy_middlewares` is that callback: `ProxyRequestIdMiddleware` replaces an
insane incoming id in the request itself, so Serve's proxy echoes the safe id,
replicas see the same one, and error bodies and logs agree with the header.
`PROXY_ENV` is the variable to give the Serve controller (``controller_options``
in serve_config.yaml, `blatam up` and the test Serve instance do so); its proxies
inherit it.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_HEADER_BYTES = REQUEST_ID_HEADER.encode()
MAX_REQUEST_ID_CHARS = 128
_SANE = re.compile(rf"^[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}$")

PROXY_CALLBACK = "deployments.common.request_id:proxy_middlewares"
PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK}
"""Environment of the Serve controller (inherited by its proxies) that installs `proxy_middlewares`."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """`value` when it is a reasonable id (1-128 safe characters), else None."""
    return value if value is not None and _SANE.match(value) else None


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == _HEADER_BYTES:
            return value.decode("latin-1")
    return None


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
        request_id = sane_request_id(_incoming_request_id(scope)) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        if not self.echo_header:
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class ProxyRequestIdMiddleware:
    """Pure ASGI middleware for Serve's proxy: leave the request exactly one sane ``x-request-id``.

    A sane incoming id stays; an insane one (or several headers) becomes one
    header with a fresh id, before Serve's own request-id middleware reads it.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            incoming = _incoming_request_id(scope)
            if incoming is not None:
                request_id = sane_request_id(incoming) or new_request_id()
                scope["headers"] = [(name, value) for name, value in scope["headers"] if name != _HEADER_BYTES]
                scope["headers"].append((_HEADER_BYTES, request_id.encode("latin-1")))
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, see `PROXY_ENV`)."""
    from deployments.common.inline_body import ProxyInlineBodyMiddleware
    from deployments.common.proxy_failures import ProxyFailureMiddleware, head_timeout_from_env
    from deployments.common.proxy_hints import ProxyHintsMiddleware

    return [Middleware(ProxyFailureMiddleware, head_timeout_s=head_timeout_from_env()),
            Middleware(ProxyHintsMiddleware), Middleware(ProxyRequestIdMiddleware),
            Middleware(ProxyInlineBodyMiddleware)]
