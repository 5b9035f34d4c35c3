"""Support for the OpenAI layer's tests: a real, unbatched LLM backend on the tiny demo model, the app
built over it, and a client that hangs up mid-stream.

It speaks the engine's ``generate_stream`` protocol (delta events, then one
done event; ValueError before the first event for a refused request) by
decoding with `ModelRunner` and `cache_actors.engine.sampling`, one token per event.
It records what it was asked and which streams were closed before ``done``,
so tests can check that the HTTP layer stops generation when a client leaves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.requests import LLMRequest
from cache_actors.engine.sampling import SamplingParams, find_stop, make_generator, sample_next
from cache_actors.engine.structured import RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS, TokenizerGrammar, compile_response_format
from deployments.llm.openai.routes import build_openai_app
from deployments.llm.openai.protocol import RequestRefused

MAX_TOKENS_LIMIT = 512


class TinyBackend:
    """``structured=True``: response formats (and tool calls) are enforced with the engine's grammar, as the
    served model does; otherwise a request with one is refused (the refusal path's tests use that)."""

    def __init__(self, runner: ModelRunner, *, token_delay_s: float = 0.0, structured: bool = False) -> None:
        self.runner = runner
        self.token_delay_s = token_delay_s
        self.grammar = TokenizerGrammar.from_tokenizer(
            runner.tokenizer, vocab_size=runner.vocab_size, eos_token_ids=runner.eos_token_ids,
            close_after_tokens=RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS) if structured else None
        self.requests: list[dict[str, Any]] = []
        self.outputs: dict[str, str] = {}  # request id -> complete text
        self.completion_tokens: dict[str, int] = {}
        self.closed_early: list[str] = []  # request ids closed before their done event

    def prompt_ids(self, request: LLMRequest) -> list[int]:
        return request.encode(self.runner)

    async def generate_stream(self, request: LLMRequest) -> AsyncIterator[dict[str, Any]]:
        assert isinstance(request, LLMRequest), f"the ingress sends LLMRequest, not {type(request).__name__}"
        self.requests.append(request)
        runner = self.runner
        constraint = None
        if request.response_format not in (None, {"type": "text"}):
            if self.grammar is None:
                raise RequestRefused("This backend cannot constrain output to a JSON format.", param="response_format")
            spec = compile_response_format(request.response_format, self.grammar)
            constraint = spec.new_constraint() if spec is not None else None
        ids = self.prompt_ids(request)
        sampling = request.sampling
        max_new = sampling.max_new_tokens
        room = runner.max_context - len(ids)
        if max_new > room:
            if not request.clamp_max_tokens or room < 1:
                raise ValueError(f"This model's maximum context length is {runner.max_context} tokens; the prompt "
                                 f"has {len(ids)} tokens and max_tokens is {max_new}.")
            max_new = room
        params = SamplingParams(max_new_tokens=max_new, temperature=sampling.temperature, top_p=sampling.top_p,
                                stop=sampling.stop, seed=sampling.seed)
        generator = make_generator(params)
        hold = max((len(s) for s in params.stop), default=1) - 1  # a stop string may still be forming
        logits, cache = runner.prefill(ids)
        generated: list[int] = []
        emitted, finish, done = "", "length", False
        try:
            while len(generated) < max_new:
                if constraint is not None:
                    constraint.mask_logits(logits)
                if len(generated) < sampling.min_tokens and not sampling.ignore_eos:
                    logits = logits.clone()
                    logits[list(runner.eos_token_ids)] = float("-inf")
                token = sample_next(logits, params, generator)
                if token in runner.eos_token_ids and not sampling.ignore_eos:
                    finish = "stop"
                    break
                generated.append(token)
                if constraint is not None:
                    constraint.accept(token)
                    if constraint.is_finished():
                        finish = "stop"
                        break
                text = runner.decode(generated)
                if find_stop(text, params.stop) is not None:
                    finish = "stop"
                    break
                safe = text[: len(text) - hold]
                if len(safe) > len(emitted) and not safe.endswith("\ufffd"):
                    yield {"type": "delta", "text": safe[len(emitted):], "token_ids": [token]}
                    emitted = safe
                await asyncio.sleep(self.token_delay_s)
                if len(generated) < max_new:
                    logits = runner.step(token, cache)
            text = runner.decode(generated)
            cut = find_stop(text, params.stop)
            text = text if cut is None else text[:cut]
            assert text.startswith(emitted), "streamed text must be a prefix of the final text"
            if len(text) > len(emitted):
                yield {"type": "delta", "text": text[len(emitted):], "token_ids": []}
            self.outputs[request.request_id] = text
            self.completion_tokens[request.request_id] = len(generated)
            done = True
            yield {"type": "done", "finish_reason": finish, "prompt_tokens": len(ids),
                   "completion_tokens": len(generated), "cached_tokens": 0}
        finally:
            if not done:
                self.closed_early.append(request.request_id)


class HandleLikeStream:
    """Wraps a backend stream the way a Serve ``DeploymentResponseGenerator`` looks: no ``aclose``, a ``cancel``."""

    def __init__(self, stream: AsyncIterator[dict[str, Any]]) -> None:
        self._stream = stream
        self.cancelled = False

    def __aiter__(self) -> HandleLikeStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._stream.__anext__()

    def cancel(self) -> None:
        self.cancelled = True
        asyncio.get_running_loop().create_task(self._stream.aclose())


class ReplyLike:
    """Wraps a backend stream the way a Serve ``DeploymentResponse`` of ``generate_events`` looks: sent at once,
    awaited for the whole list of events, ``cancel``."""

    def __init__(self, stream) -> None:
        async def collect() -> list[dict[str, Any]]:
            return [event async for event in stream]

        self._task = asyncio.get_running_loop().create_task(collect())
        self.cancelled = False

    def __await__(self):
        return self._task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self._task.cancel()


def make_app(stream_fn, runner: ModelRunner, **overrides: Any) -> FastAPI:
    settings = {"model_id": runner.model_id, "max_context": runner.max_context, "max_tokens_limit": MAX_TOKENS_LIMIT}
    settings.update(overrides)
    return build_openai_app(stream_fn, **settings)


def mounted(app: FastAPI) -> FastAPI:
    """The app under ``/v1``, as Serve's route prefix mounts it."""
    root = FastAPI()
    root.mount("/v1", app)
    return root


async def post_then_leave(app: FastAPI, path: str, body: dict[str, Any], *, after_events: int,
                          how: str) -> list[bytes]:
    """POST through the raw ASGI interface and disconnect after `after_events` body messages.

    ``how``: ``"receive"`` (ASGI spec 2.3 servers report the disconnect through
    ``receive``), ``"send"`` (2.4 servers: ``send`` raises OSError) or
    ``"cancel"`` (the request's task is cancelled, as Serve does when its
    proxy loses the client).
    """
    received: list[bytes] = []
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            if gone.is_set():
                raise OSError("client went away")
            received.append(message["body"])
            if len(received) >= after_events:
                gone.set()
                if how == "send":
                    raise OSError("client went away")
                if how == "cancel":
                    asyncio.current_task().cancel()

    spec_version = "2.4" if how == "send" else "2.3"
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "client": ("t", 1),
             "server": ("llm", 80), "state": {}}
    try:
        await app(scope, receive, send)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - ClientDisconnect or the cancellation
        assert how != "receive"
    return received


def greedy_reference(runner: ModelRunner, token_ids: list[int], max_tokens: int) -> str:
    """Plain greedy decoding in this process: no cache, no batching (what served text must equal)."""
    logits, kv = runner.prefill(token_ids)
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(logits.argmax())
        if token in runner.eos_token_ids:
            break
        out.append(token)
        logits = runner.step(token, kv)
    return runner.decode(out)
