"""The forwarding protocol: how the gateway calls a service's HTTP routes through a handle.

A service is routable by the gateway (``/api/v1/<service>/...`` and
``POST /api/v1/gateway/route``) when its Serve application's ingress
deployment has a method::

    async def handle_request(self, method: str, path: str, body: bytes = b"",
                             query: list[tuple[str, str]] | None = None,
                             headers: dict[str, str] | None = None,
                             caller: dict | None = None) -> ForwardedResponse

The easiest way is to mix `ServiceIngress` into the FastAPI ingress class; it
runs the forwarded request through the deployment's own FastAPI app in
process (no network, no second copy of the routes), so every route works the
same directly (``/redundancy/analyze`` on the Serve proxy) and through the
gateway (``/api/v1/redundancy/analyze``)::

    from deployments.common.forwarding import ServiceIngress, forwarded_caller

    app = FastAPI(title="Redundancy")

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Redundancy(ServiceIngress):
        @app.post("/analyze")
        async def analyze(self, request: Request, body: AnalyzeIn) -> AnalyzeOut:
            caller = forwarded_caller(request)   # None when called directly
            tenant = caller.tenant if caller else "public"
            ...

Also works with ``@serve.ingress()`` + ``__serve_build_asgi_app__`` (late-bound
app) and with ``serve.ingress(build_app)`` builders: `ServiceIngress` uses
whatever app Serve wrapped (``self.app``).

Conventions the gateway relies on:

- ``path`` is the path inside the service's app (``/analyze``, not
  ``/redundancy/analyze``); the gateway strips ``/api/v1/<service>``.
- The service answers ``GET /health`` (2xx = healthy) if it wants more than
  "Serve says RUNNING" on the gateway's ``/health``.
- Errors use the uniform body (`deployments.common.errors.install_error_handlers`);
  the gateway wraps any other error body it receives into that shape.
- The caller (tenant, subject, scopes) arrives as a scope extension, not as
  headers, so a direct HTTP client cannot forge it: read it with
  `forwarded_caller(request)`. The request id arrives as ``X-Request-ID``.
- ``handle_request`` collects the whole response before returning it.
  ``handle_request_stream`` (same arguments, a generator: call it with
  ``.options(stream=True)``) yields the head first (a `ForwardedResponse`
  with an empty body) and then the body chunks as the app sends them; the
  gateway uses it for the services it streams (``GATEWAY_STREAM_SERVICES``),
  so server-sent events arrive as they are produced. Closing the stream
  early tells the app the client went away (``http.disconnect``).

Pitfall: do not put ``from __future__ import annotations`` in a module whose
routes are methods of the ingress class (``@app.post`` inside the class):
Serve rewrites those signatures and a string annotation such as ``Request``
then becomes a required query parameter (422 on every call). Routes defined
on a plain FastAPI app (builder style) are not affected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message

from deployments.common.errors import error_body
from deployments.common.request_id import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

CALLER_SCOPE_KEY = "blatam.caller"
"""Key in ``scope["extensions"]`` under which forwarded calls carry the caller."""

FORWARDED_HEADERS = ("content-type", "accept", "accept-language", REQUEST_ID_HEADER)
"""Request headers the gateway passes on (credentials never leave the gateway)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who the gateway authenticated for this forwarded call."""

    tenant: str
    subject: str
    scopes: tuple[str, ...] = ()
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "subject": self.subject, "scopes": list(self.scopes),
                "request_id": self.request_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Caller:
        return cls(tenant=str(data["tenant"]), subject=str(data["subject"]),
                   scopes=tuple(data.get("scopes", ())), request_id=data.get("request_id"))


@dataclass(slots=True)
class ForwardedResponse:
    """A service's complete HTTP response, as it travels back through the handle."""

    status_code: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def forwarded_caller(conn: HTTPConnection) -> Caller | None:
    """The caller of a request forwarded by the gateway, or None for a direct request."""
    data = conn.scope.get("extensions", {}).get(CALLER_SCOPE_KEY)
    return Caller.from_dict(data) if data else None


def _asgi_scope(
    *,
    method: str,
    path: str,
    body: bytes,
    query: Iterable[tuple[str, str]] | None,
    headers: Mapping[str, str] | None,
    caller: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The HTTP scope of one forwarded request."""
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if body and not any(k == b"content-length" for k, _ in raw_headers):
        raw_headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": urlencode(list(query or ()), doseq=True).encode("latin-1"),
        "headers": raw_headers,
        "client": ("gateway", 0),
        "server": ("service", 80),
        "extensions": {CALLER_SCOPE_KEY: dict(caller)} if caller else {},
        "state": {},
    }


def _failed_before_answering(method: str, path: str, headers: Mapping[str, str] | None,
                             exc: BaseException | None) -> ForwardedResponse:
    """The 500 for an app that raised (or ended) before sending its status line."""
    logger.error("Forwarded %s %s failed inside the service", method, path, exc_info=exc)
    request_id = (headers or {}).get(REQUEST_ID_HEADER)
    payload = json.dumps(error_body("internal_error", "The service failed on this request", request_id))
    return ForwardedResponse(500, [("content-type", "application/json")], payload.encode())


def _head(message: Message) -> ForwardedResponse:
    return ForwardedResponse(int(message["status"]),
                             [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())])


async def call_asgi(
    app: ASGIApp,
    *,
    method: str,
    path: str,
    body: bytes = b"",
    query: Iterable[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    caller: Mapping[str, Any] | None = None,
) -> ForwardedResponse:
    """Run one HTTP request through `app` in process and collect its response (`stream_asgi`, whole).

    A request the app fails on before answering becomes a 500 with the uniform body.
    """
    response: ForwardedResponse | None = None
    chunks: list[bytes] = []
    async for item in stream_asgi(app, method=method, path=path, body=body, query=query, headers=headers,
                                  caller=caller):
        if isinstance(item, ForwardedResponse):
            response = item
        else:
            chunks.append(item)
    assert response is not None  # stream_asgi always yields a head first
    response.body = b"".join(chunks)
    return response


#: How long a stream closed early waits for the app to wind down after the disconnect.
DISCONNECT_GRACE_S = 2.0


async def stream_asgi(
    app: ASGIApp,
    *,
    method: str,
    path: str,
    body: bytes = b"",
    query: Iterable[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    caller: Mapping[str, Any] | None = None,
) -> AsyncIterator[ForwardedResponse | bytes]:
    """Run one HTTP request through `app` in process; yield its head, then its body chunks as sent.

    The app runs in its own task. The "client" stays connected until the
    consumer is done: reporting a disconnect earlier makes Starlette cancel
    streamed responses (FileResponse, StreamingResponse). When the consumer
    stops early (the client went away), the app receives ``http.disconnect``,
    which ends a streaming response and lets it release what it holds; an app
    that does not wind down within `DISCONNECT_GRACE_S` is cancelled. An
    error after the status line only ends the body (Starlette's
    ServerErrorMiddleware re-raises after sending its 500, so that servers
    can log it).
    """
    scope = _asgi_scope(method=method, path=path, body=body, query=query, headers=headers, caller=caller)
    messages: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    request_sent = False

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.put_nowait(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer below
            messages.put_nowait(exc)
        finally:
            messages.put_nowait(None)

    task = asyncio.create_task(run())
    started = False
    try:
        while True:
            item = await messages.get()
            if item is None or isinstance(item, BaseException):
                if not started:
                    failed = _failed_before_answering(method, path, headers, item)
                    yield ForwardedResponse(failed.status_code, failed.headers)
                    yield failed.body
                return  # after the status line, an error just ends the body (Starlette logged it)
            if item["type"] == "http.response.start":
                started = True
                yield _head(item)
            elif item["type"] == "http.response.body":
                if item.get("body"):
                    yield item["body"]
                if not item.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_GRACE_S)
            if not done:
                task.cancel()


class ServiceIngress:
    """Mixin for a service's ``@serve.ingress`` class: implements ``handle_request``.

    It calls ``self.app`` (the ASGI app Serve wrapped for this replica), so the
    gateway reaches exactly the routes a direct HTTP client reaches.
    """

    async def handle_request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        caller: dict[str, Any] | None = None,
    ) -> ForwardedResponse:
        """Serve one request forwarded by the gateway (see the module docstring)."""
        return await call_asgi(self.app, method=method, path=path, body=body, query=query, headers=headers,
                               caller=caller)

    async def handle_request_stream(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        caller: dict[str, Any] | None = None,
    ) -> AsyncIterator[ForwardedResponse | bytes]:
        """Serve one forwarded request as a stream: the head, then body chunks (see the module docstring)."""
        async for item in stream_asgi(self.app, method=method, path=path, body=body, query=query, headers=headers,
                                      caller=caller):
            yield item
