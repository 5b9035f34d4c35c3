"""One OpenAI-compatible server as `blatam bench peers` drives it: TTFT and output tokens per second.

Everything goes through ``/v1/completions`` with text prompts and greedy
decoding, the same requests for ours and the peer:

- TTFT: a streamed request for one token; the time from sending it to the
  first ``data:`` event. With one token that event is the token itself on
  any server (a server may hold back the text of a partial UTF-8 character,
  but a one-token stream must end), and ``stream_options.include_usage``
  returns what the server counted: prompt tokens and cached tokens.
- Throughput: ``new_tokens`` per request, one request at a time or all at
  once; output tokens (from ``usage``) over the wall time, prefill included.
  ``ignore_eos`` is sent only to a server that accepts it (vLLM does; ours
  answers 400 until it does), so a model that ends early is counted as it
  ran, and the JSON says how many tokens each request produced.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

REQUEST_TIMEOUT_S = 600.0


class PeerError(RuntimeError):
    """A server answered something the benchmark cannot use (said in one line)."""


@dataclass(slots=True)
class Server:
    """Where a server is, the model it names, and what its completions accept beyond OpenAI's fields."""

    name: str
    base_url: str
    """Up to and including ``/v1``."""
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    """``Authorization`` when the server wants an API key (our gateway's /v1, a vLLM started with --api-key)."""


@dataclass(frozen=True, slots=True)
class TTFT:
    """One timed first token and what the server counted for its prompt."""

    ms: float
    prompt_tokens: int | None
    cached_tokens: int | None


@dataclass(frozen=True, slots=True)
class Throughput:
    """Output tokens per second of a batch of requests, and each request's output tokens."""

    tok_s: float
    completion_tokens: list[int]


def _usage_numbers(usage: dict[str, Any] | None) -> tuple[int | None, int | None]:
    if not usage:
        return None, None
    details = usage.get("prompt_tokens_details") or {}
    return usage.get("prompt_tokens"), details.get("cached_tokens")


def _check(response: httpx.Response, server: Server, what: str) -> None:
    if response.status_code != 200:
        raise PeerError(f"{server.name} ({server.base_url}) answered {what} with {response.status_code}: "
                        f"{response.text[:300]}")


async def connect(http: httpx.AsyncClient, name: str, base_url: str, api_key: str | None = None) -> Server:
    """The server's model id (``GET /models``) and whether its completions take ``ignore_eos``."""
    server = Server(name=name, base_url=base_url.rstrip("/"),
                    headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        response = await http.get(f"{server.base_url}/models", headers=server.headers)
    except httpx.HTTPError as exc:
        raise PeerError(f"{name} is not reachable at {server.base_url}: {exc}") from exc
    _check(response, server, "GET /models")
    server.model = response.json()["data"][0]["id"]
    probe = await http.post(f"{server.base_url}/completions", headers=server.headers, json={
        "model": server.model, "prompt": "probe", "max_tokens": 1, "temperature": 0, "ignore_eos": True})
    if probe.status_code == 200:
        server.extra = {"ignore_eos": True}
    return server


Prompt = str | list[int]
"""Text, or token ids (OpenAI's completions take both; `blatam bench ttft --served` sends ids)."""


def _body(server: Server, prompt: Prompt, max_tokens: int, **more: Any) -> dict[str, Any]:
    return {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **server.extra,
            **more}


async def ttft(http: httpx.AsyncClient, server: Server, prompt: Prompt) -> TTFT:
    """Time to the first streamed event of a one-token completion (see the module docstring)."""
    body = _body(server, prompt, 1, stream=True, stream_options={"include_usage": True})
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    async with http.stream("POST", f"{server.base_url}/completions", json=body, headers=server.headers) as response:
        if response.status_code != 200:
            await response.aread()
            _check(response, server, "a streamed completion")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            if first is None:
                first = time.perf_counter()
            data = line[5:].strip()
            if data == "[DONE]":
                break
            usage = json.loads(data).get("usage") or usage
    if first is None:
        raise PeerError(f"{server.name} streamed no event")
    prompt_tokens, cached_tokens = _usage_numbers(usage)
    return TTFT((first - started) * 1000, prompt_tokens, cached_tokens)


async def complete(http: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int) -> int:
    """One whole completion; its output tokens."""
    response = await http.post(f"{server.base_url}/completions", json=_body(server, prompt, max_tokens),
                               headers=server.headers)
    _check(response, server, "a completion")
    return int(response.json()["usage"]["completion_tokens"])


async def throughput(http: httpx.AsyncClient, server: Server, prompts: list[str], *, new_tokens: int,
                     concurrent: bool) -> Throughput:
    """Output tokens per second over ``prompts``: one after the other, or all at once."""
    started = time.perf_counter()
    if concurrent:
        counts = list(await asyncio.gather(*(complete(http, server, p, new_tokens) for p in prompts)))
    else:
        counts = [await complete(http, server, p, new_tokens) for p in prompts]
    wall = time.perf_counter() - started
    return Throughput(sum(counts) / wall, counts)


def http_client(concurrency: int) -> httpx.AsyncClient:
    """One client for both servers: enough connections for every concurrent request, no pool waits."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits)
