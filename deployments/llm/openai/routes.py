"""The OpenAI-compatible HTTP API of the LLM deployment, as a FastAPI app over a backend stream.

Routes (inside the app; Serve mounts it under ``/v1``):

- ``GET /models``, ``GET /models/{model}``: the one served model.
- ``POST /completions``, ``POST /chat/completions``: OpenAI's bodies and
  responses; ``stream: true`` answers server-sent events ending in
  ``data: [DONE]`` (`deployments.llm.openai.sse`).
- ``GET /health``, ``GET /version``; ``POST /tokenize``, ``POST /detokenize`` (vLLM's bodies:
  `deployments.llm.openai.tokenization`), which harnesses use to size prompts.

The app does no generation itself: ``stream_fn(request)`` starts one backend
request (a `cache_actors.engine.requests.LLMRequest`) and returns its
async iterator of events; in Serve that is
``handle.options(stream=True).generate_stream.remote``. ``n > 1`` becomes n
backend requests merged into one response. Every error answers with OpenAI's
error body (`deployments.llm.openai.errors`). The app is builder-style, so it
can be wrapped with ``serve.ingress(app)`` by a class that mixes in
`deployments.common.forwarding.ServiceIngress` (gateway routing).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from deployments.common.inline_body import InlineBodyMiddleware
from deployments.common.forwarding import forwarded_caller
from cache_actors.engine.tool_calls import ToolCallParser
from deployments.llm.openai.choice_streams import ChoiceStream, StreamFn, close_all, MergedEvents, open_choices
from deployments.llm.openai.errors import from_backend_exception, from_validation_errors, install_openai_error_handlers
from deployments.llm.openai.backend_requests import ServingLimits, check_limits, to_backend_requests
from deployments.llm.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from deployments.llm.openai.logprob_format import completion_logprobs
from deployments.llm.openai.openapi_doc import document_bodies
from deployments.llm.openai.responses import ID_PREFIX, ChoiceResult, ChunkShaper, Kind, full_response, usage
from deployments.llm.openai.sse import SSE_DONE, SSEResponse, sse_event
from deployments.llm.openai.tokenization import DetokenizeRequest, TokenizeRequest

OWNED_BY = "blatam"
Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The JSON body validated as `model`; any problem is a 400 in OpenAI's shape.

    Parsed by hand rather than as a FastAPI body parameter so a client that
    forgets ``Content-Type: application/json`` (curl -d) is still understood.
    """
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise from_validation_errors([{"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON"}]) from None
    except RecursionError:  # nested deeper than the parser's stack allows
        raise _too_deep() from None
    if nested_deeper_than(raw, data, MAX_JSON_DEPTH):
        raise _too_deep()
    if b"\\u" in raw:  # an escape such as "\ud800" decodes to a lone surrogate, which no tokenizer can encode
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise OpenAIError(400, "The JSON body has a \\u escape of a lone UTF-16 surrogate (\\ud800 to "
                                   "\\udfff without its pair), which is not a character.", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_url=False)) from None


MAX_JSON_DEPTH = 64
"""Deepest body accepted: a JSON schema in ``response_format`` or a tool nests deepest, a few levels in practice.

Explicit, because the parser's own bound is the interpreter's recursion limit
less the handler's stack: 1,000 levels parsed in the model replica, where
importing ``torch._dynamo`` raises that limit, and failed in the ingress."""


def nested_deeper_than(raw: bytes, data: Any, limit: int) -> bool:
    """Whether parsed JSON `data` (from `raw`) nests more than `limit` arrays and objects deep.

    Bodies with at most `limit` brackets in all (nearly every request, a token-id prompt included) are
    answered from two C-speed counts; only the others are walked, one level at a time.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    level = [data] if isinstance(data, (list, dict)) else []
    for _ in range(limit):  # after the i-th pass, `level` holds the containers at depth i + 1
        level = [child for node in level for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (list, dict))]
        if not level:
            return False
    return True


def _too_deep() -> OpenAIError:
    return OpenAIError(400, "The JSON body is nested too deeply; no request of this API nests more than a few "
                            "levels.", code="invalid_json")


def build_openai_app(
    stream_fn: StreamFn,
    *,
    model_id: str,
    max_context: int | None,
    max_tokens_limit: int,
    default_completion_max_tokens: int = 16,
    overloaded_errors: tuple[type[BaseException], ...] = (),
    title: str = "Blatam LLM (OpenAI-compatible)",
    model_info: dict[str, Any] | None = None,
    tokenizer_fn: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    version: str = "",
) -> FastAPI:
    """The app serving `model_id` through `stream_fn` (see the module docstring).

    ``max_tokens_limit`` caps ``max_tokens`` per request (also the default for
    chat when the client sets none); ``max_context`` (if known) refuses a
    ``max_tokens`` that leaves no room for a prompt before calling the backend,
    which checks prompt + max_tokens exactly after tokenizing.
    ``overloaded_errors``: backend exception types that mean "busy, retry"
    (503 with Retry-After), besides Serve's back pressure.
    ``model_info`` (e.g. ``{"kind": "demo", "note": ...}``) joins the model
    card under ``blatam`` and ``/health``, so a client sees that it talks to
    the demo model and why. ``tokenizer_fn(method, body)`` runs ``tokenize``
    or ``detokenize`` where the tokenizer is (``/tokenize``, ``/detokenize``
    answer 404 without it); ``version`` is what ``/version`` says.
    """
    if max_tokens_limit < 1:
        raise ValueError(f"max_tokens_limit must be at least 1, got {max_tokens_limit}")
    limits = ServingLimits(model_id=model_id, max_tokens_limit=max_tokens_limit, max_context=max_context,
                           default_completion_max_tokens=default_completion_max_tokens)
    created = int(time.time())
    app = FastAPI(title=title)
    app.state.limits = limits
    install_openai_error_handlers(app)
    document_bodies(app)

    def model_card() -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": OWNED_BY,
                "max_model_len": max_context}
        return {**card, "blatam": dict(model_info)} if model_info else card

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, **(model_info or {})}

    @app.get("/version")
    async def get_version() -> dict[str, Any]:
        return {"version": version}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        return await _tokenizer_call(request, TokenizeRequest, "tokenize")

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        return await _tokenizer_call(request, DetokenizeRequest, "detokenize")

    async def _tokenizer_call(request: Request, model: type[BaseModel], method: str) -> dict[str, Any]:
        if tokenizer_fn is None:
            raise OpenAIError(404, f"/{method} is not available on this server.", code="not_found")
        body = await parse_body(request, model)
        if body.model is not None and body.model != model_id:
            raise OpenAIError(404, f"The model `{body.model}` does not exist. This server serves `{model_id}`.",
                              param="model", code="model_not_found")
        try:
            return await tokenizer_fn(method, body.model_dump(exclude_none=True))
        except Exception as exc:  # noqa: BLE001 - mapped to the client's error in one place
            raise from_backend_exception(exc, overloaded=overloaded_errors) from None

    @app.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        if model != model_id:
            raise OpenAIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return model_card()

    @app.post("/completions")
    async def completions(request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        return await _generate(request, body, "completion")

    @app.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        return await _generate(request, body, "chat")

    async def _generate(request: Request, body: CompletionRequest | ChatCompletionRequest, kind: Kind) -> Response:
        check_limits(body, limits)
        response_id = ID_PREFIX[kind] + uuid.uuid4().hex
        caller = forwarded_caller(request)
        try:  # a request the backend model refuses (e.g. an over-long tenant id) is a 400 like the backend's own
            backend_requests = to_backend_requests(body, request_id=response_id,
                                                   tenant_id=caller.tenant if caller else None, limits=limits)
            streams = await open_choices(stream_fn, backend_requests)
        except Exception as exc:  # noqa: BLE001 - mapped to the client's error in one place
            raise from_backend_exception(exc, overloaded=overloaded_errors) from None
        shaper = ChunkShaper(kind, response_id, int(time.time()), model_id, include_usage=body.include_usage)
        choices = [_choice_result(s.index, body) for s in streams]
        if body.stream:
            return SSEResponse(_stream_body(streams, choices, shaper, overloaded_errors,
                                            continuous_usage=body.continuous_usage),
                               cleanup=lambda: close_all(streams))
        try:
            async with aclosing(MergedEvents(streams)) as events:
                async for index, event in events:
                    choices[index].apply(event)
        except Exception as exc:  # noqa: BLE001 - mapped to the client's error in one place
            raise from_backend_exception(exc, overloaded=overloaded_errors) from None
        return JSONResponse(full_response(kind, response_id=response_id, created=shaper.created, model=model_id,
                                          choices=choices))

    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    return app


def _choice_result(index: int, body: CompletionRequest | ChatCompletionRequest) -> ChoiceResult:
    """A choice's accumulator; with tools in play its text is parsed for a tool call.

    ``echo`` starts as the prompt string (a token-id prompt's text comes from the engine).
    """
    calls_possible = isinstance(body, ChatCompletionRequest) and body.tools and body.tool_choice != "none"
    echo = None
    if isinstance(body, CompletionRequest) and body.echo:
        echo = body.prompt if isinstance(body.prompt, str) else ""
    return ChoiceResult(index, tool_parser=ToolCallParser() if calls_possible else None,
                        logprobs=body.logprobs_top is not None, echo=echo)


async def _stream_body(streams: list[ChoiceStream], choices: list[ChoiceResult], shaper: ChunkShaper,
                       overloaded: tuple[type[BaseException], ...], *, continuous_usage: bool = False,
                       ) -> AsyncIterator[bytes]:
    """The SSE events of one streamed response; an error after the start is an error event, then [DONE]."""
    sent_chars = [0] * len(choices)  # text streamed per choice: where the next chunk's logprob offsets start
    echoed: set[int] = set()

    def chunk(index: int, body: dict[str, Any]) -> bytes:
        choice = choices[index]
        logprobs = choice.take_unsent(shaper.kind, sent_chars[index])
        if logprobs is not None:
            body["choices"][0]["logprobs"] = logprobs
        if shaper.kind == "completion":
            sent_chars[index] += len(body["choices"][0]["text"])
        if continuous_usage:  # vLLM's continuous_usage_stats: the usage so far in every chunk
            body["usage"] = usage(choices)
        return sse_event(body)

    try:
        if shaper.kind == "chat":
            for choice in choices:
                yield chunk(choice.index, shaper.role(choice.index))
        async with aclosing(MergedEvents(streams)) as events:
            async for index, event in events:
                choice = choices[index]
                pieces = choice.apply(event)
                if choice.echo is not None and index not in echoed:  # completions' echo: the prompt first
                    echoed.add(index)
                    echo = shaper.delta(index, choice.echo)
                    if choice.logprobs:
                        echo["choices"][0]["logprobs"] = completion_logprobs(choice.prompt_entries)
                    sent_chars[index] += len(choice.echo)
                    yield sse_event(echo)
                for piece in pieces:
                    yield chunk(index, shaper.piece(index, piece))
                if event["type"] == "done":
                    yield chunk(index, shaper.finish(index, choice.finish_reason or event["finish_reason"]))
        if shaper.include_usage:
            yield sse_event(shaper.usage(choices))
    except Exception as exc:  # noqa: BLE001 - the status line is sent: report in the stream
        yield sse_event(from_backend_exception(exc, overloaded=overloaded).body())
    yield SSE_DONE
