"""A request body sent to the replica with the request through Serve's proxy, not fetched back in a second call.

Why: Serve 2.60's proxy sends a replica only the ASGI scope of an HTTP
request. When the replica's app reads the body, its ``receive`` looks the
proxy actor up by name (`ray.get_actor`, per request) and calls it back
for the body's messages: a second Ray round trip on every POST's path
before the handler can start. Measured on 2 cores with stage clocks in the
proxy and the model replica (a cached 2,048-token completion): 2.7 ms from
the replica's handler to a parsed body, of which the parse is 0.4.

So the proxy side (`ProxyInlineBodyMiddleware`, in the proxy through
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) reads a body of a known
length up to `INLINE_MAX_BYTES` before Serve dispatches the request and
puts it in the scope under `SCOPE_KEY`; the scope travels with the request.
The replica side (`InlineBodyMiddleware`, in each of our HTTP apps) answers
the app's first ``receive`` from it. Nothing else changes:

- the proxy still queues the body's messages for the replica, so an app
  without the replica side reads them by calling back, as before;
- the replica side passes every later ``receive`` on to Serve's, minus
  those queued body messages, so a streaming response still learns of the
  client's disconnect (Starlette listens for ``http.disconnect``);
- a body without a length (chunked), or longer than `INLINE_MAX_BYTES`
  (the gateway takes up to 10 MiB), takes the old path: the proxy does not
  buffer it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "blatam.body"
"""Where the proxy side leaves the body in the scope (bytes)."""
INLINE_MAX_BYTES = 1024 * 1024
"""Bodies up to this length travel with the request (a 4,096-token prompt as text or token ids is ~20 KB)."""


def _content_length(scope: Scope) -> int | None:
    values = [value for name, value in scope.get("headers", ()) if name == b"content-length"]
    if len(values) != 1 or not values[0].isdigit():
        return None  # none, several or not a number: the proxy's server refuses the last two anyway
    return int(values[0])


class ProxyInlineBodyMiddleware:
    """Pure ASGI middleware for Serve's proxy: put a short body of known length in the scope (module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int = INLINE_MAX_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _content_length(scope) if scope["type"] == "http" else None
        if length is None or not 0 < length <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        parts: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client left mid-body: Serve's side sees the same disconnect below
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                scope[SCOPE_KEY] = b"".join(parts)
                break
        pending = iter(messages)

        async def replay() -> Message:
            """The messages read here, then the client's next (its disconnect), for Serve's queue."""
            message = next(pending, None)
            return message if message is not None else await receive()

        await self.app(scope, replay, send)


class InlineBodyMiddleware:
    """Pure ASGI middleware for a replica's app: its first ``receive`` answered from the scope (module docstring)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = scope.get(SCOPE_KEY) if scope["type"] == "http" else None
        if not isinstance(body, bytes):
            await self.app(scope, receive, send)
            return
        given = False

        async def inline_receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            while True:  # the proxy queued the body's messages too: only what follows them is news
                message = await receive()
                if message["type"] != "http.request":
                    return message

        await self.app(scope, inline_receive, send)
