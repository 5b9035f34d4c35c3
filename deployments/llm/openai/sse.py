"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` events, then ``data: [DONE]``.

`SSEResponse` differs from Starlette's `StreamingResponse` in one way that the
engine relies on: whatever ends the response (the last event, a client that
went away, a cancelled request), it closes the body iterator and runs its
``cleanup`` before returning, so the backend streams behind it are closed
now, not when the garbage collector gets to the generator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event (compact JSON on one line, as OpenAI sends it)."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """``text/event-stream`` response that always closes its body and runs ``cleanup``."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], *, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(body, headers=SSE_HEADERS)
        self._body = body
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
            if self._cleanup is not None:
                await self._cleanup()
