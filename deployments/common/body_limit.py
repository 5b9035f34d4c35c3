"""Refuse request bodies over a byte limit with 413 and the uniform error body.

Checks ``Content-Length`` first (no body is read), then counts the bytes of
chunked bodies as they arrive and stops at the limit by raising an
``HTTPException(413)`` from ``receive``, which FastAPI re-raises as it is and
`install_error_handlers` turns into the uniform body.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.common.errors import error_body


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 ``payload_too_large`` above ``max_bytes``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"Request body exceeds the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    request_id = scope.get("state", {}).get("request_id")
                    body = json.dumps(error_body("payload_too_large", self._message(), request_id)).encode()
                    await send({"type": "http.response.start", "status": 413, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self._message())
            return message

        await self.app(scope, counting_receive, send)
