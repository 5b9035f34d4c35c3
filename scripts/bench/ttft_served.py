"""The served side of `blatam bench ttft --served`: TTFT through HTTP on the `llm` app, from the timing loop.

`scripts.bench.ttft` times the in-process engine synchronously, one trial
after another; this wraps the peers bench's streamed one-token request
(`scripts.bench.peers_client.ttft`, the same client code, so the served
figure here is the one `blatam bench peers` reports) in one event loop and
one connection pool that stay open across trials, so each timed request pays
what a client with a kept-alive connection pays, not a TCP or loop start.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import httpx

from scripts.bench.peers_client import PeerError, connect, http_client, ttft


class ServedTTFT:
    """Time to first token of token-id prompts on an OpenAI ``/v1``, callable from synchronous code."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self._runner = asyncio.Runner()
        self._http = self._runner.run(self._open())
        try:
            self._server = self._runner.run(connect(self._http, "served", base_url, api_key))
        except BaseException:
            self.close()
            raise

    @staticmethod
    async def _open() -> httpx.AsyncClient:  # the client binds to the runner's loop, so it is made inside it
        return http_client(1)

    def __call__(self, ids: list[int]) -> tuple[float, int]:
        """Milliseconds to the first token of ``ids`` and the tokens the server said it had cached."""
        result = self._runner.run(ttft(self._http, self._server, ids))
        if result.cached_tokens is None:
            raise PeerError("the served app reported no prompt_tokens_details.cached_tokens")
        return result.ms, result.cached_tokens

    def close(self) -> None:
        try:
            self._runner.run(self._http.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> ServedTTFT:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
