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

It also bounds the wait for a response's head (`HEAD_TIMEOUT_ENV`). Serve's
router can lose a request: in a fault drill (a gateway replica killed under
load) one request got ``ActorDiedError`` from the dying replica before it was
accepted, was put back in the router's queue ("will not be considered for
future requests" with its request id in the proxy's log), and was never
routed, while every request queued beside it went to the new replica 10 s
later; its client waited until it gave up. Serve's own ``request_timeout_s``
cannot be the bound: it limits the whole response, so it also cuts a long
stream. This bounds only the head: when no response has started within the
deadline, the request is cancelled and answered 503 with ``Retry-After``. Set
it above the longest head the apps may legitimately take (the gateway's
``gateway_llm_timeout_s``, 600 s by default, for a whole non-streamed
completion): then nothing running is cut, and a request the router lost is
answered instead of held until the client leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
HEAD_TIMEOUT_ENV = "BLATAM_PROXY_HEAD_TIMEOUT_S"
"""Seconds a response may take to start at the proxy (0 or less: no bound). Read by the proxy at start-up."""
DEFAULT_HEAD_TIMEOUT_S = 660.0
"""Above the gateway's longest own budget (``gateway_llm_timeout_s``, 600 s) with a margin."""
_CANCEL_WAIT_S = 5.0
"""How long a cancelled request may take to unwind before the 503 goes out anyway."""
_WENT_AWAY = "The service replica serving this request went away; retry."


def head_timeout_from_env() -> float | None:
    """`HEAD_TIMEOUT_ENV` in seconds (None: no bound); a malformed value is logged and the default used."""
    raw = os.environ.get(HEAD_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEAD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number of seconds; using %g", HEAD_TIMEOUT_ENV, raw, DEFAULT_HEAD_TIMEOUT_S)
        return DEFAULT_HEAD_TIMEOUT_S
    return value if value > 0 else None


def _is_proxy_failure(message: Message) -> bool:
    if message.get("status") != 500:
        return False
    content_type = next((v for k, v in message.get("headers", ()) if k.lower() == b"content-type"), b"")
    return b"json" not in content_type


class ProxyFailureMiddleware:
    """Pure ASGI middleware for Serve's proxy (see the module docstring); ``head_timeout_s`` None: no bound."""

    def __init__(self, app: ASGIApp, head_timeout_s: float | None = None):
        self.app = app
        self.head_timeout_s = head_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = replaced = gave_up = False
        head = asyncio.Event()

        async def send_checked(message: Message) -> None:
            nonlocal started, replaced
            if gave_up:  # answered already: whatever the cancelled request still sends goes nowhere
                return
            if message["type"] == "http.response.start":
                started = True
                head.set()
                if _is_proxy_failure(message):
                    replaced = True
                    await _send_retry(send, message.get("headers", ()))
                    return
            if replaced:  # the proxy's own text body: already answered
                return
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, send_checked))
        try:
            if self.head_timeout_s is not None and not await _started_within(app, head, self.head_timeout_s):
                gave_up = True
                await _give_up(app)
                request_id = _scope_request_id(scope)
                logger.warning("No response began within %g s for %s %s (request id %s): answered 503",
                               self.head_timeout_s, scope.get("method"), scope.get("path"), request_id)
                await _send_retry(send, (), request_id, f"No response began within {self.head_timeout_s:g} s; retry.")
                return
            await app
        except asyncio.CancelledError:
            app.cancel()
            raise
        except Exception:
            if started:
                raise
            await _send_retry(send, (), _scope_request_id(scope))
            return
        if not started:  # the proxy gave up without a word; uvicorn would send a plain-text 500
            await _send_retry(send, (), _scope_request_id(scope))


async def _started_within(app: asyncio.Future, head: asyncio.Event, timeout_s: float) -> bool:
    """Whether the response started (or the app ended) within ``timeout_s``."""
    waiting = asyncio.ensure_future(head.wait())
    try:
        await asyncio.wait({app, waiting}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    return head.is_set() or app.done()


async def _give_up(app: asyncio.Future) -> None:
    """Cancel the request and give it a moment to unwind; its outcome is moot (the client gets the 503)."""
    app.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved: never logged as lost
    app.cancel()
    await asyncio.wait({app}, timeout=_CANCEL_WAIT_S)


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-request-id"), None)


def _scope_request_id(scope: Scope) -> str | None:
    """The request's id as Serve's RequestIdMiddleware left it in the (shared) scope."""
    return _request_id(scope.get("headers", ()))


def retry_body(message: str = _WENT_AWAY, request_id: str | None = None) -> bytes:
    """The uniform body of a 503 to retry; HAProxy's error page has it too (`scripts.haproxy_error_page`).

    Spelled out, not `deployments.common.errors.error_body`: that module reaches the request-id one, which
    installs this middleware, so importing it here would close a circle.
    """
    return json.dumps({"error": {"code": "service_unavailable", "message": message,
                                 "request_id": request_id}}).encode()


async def _send_retry(send: Send, headers: Iterable[tuple[bytes, bytes]], request_id: str | None = None,
                      message: str = _WENT_AWAY) -> None:
    """The 503 + Retry-After answer with the uniform body, keeping `headers` but the content ones."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    sent = _request_id(kept)
    if sent is None and request_id is not None:
        kept.append((b"x-request-id", request_id.encode("latin-1")))
    body = retry_body(message, sent or request_id)
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
             (b"retry-after", str(RETRY_AFTER_S).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": kept})
    await send({"type": "http.response.body", "body": body, "more_body": False})
