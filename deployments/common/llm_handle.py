"""`LLMHandleClient`: the business services' `LLMClient` over the `llm` application's Serve handle.

Each call goes to ``LLMServer.generate_stream`` as its own Serve request
(`call_as_own_request`: a service makes many calls while serving one HTTP
request, and Serve 2.60 would never route a second concurrent call that
shares the parent's internal id). The tenant goes into the request, so the
KV cache salts block keys per tenant. Every call is bounded by its spec's
``timeout_s``; on timeout or cancellation the stream is closed, which
cancels the generation and frees its batch slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from business_modules.llm_client import (
    Generation,
    GenerationUsage,
    LLMError,
    LLMRequestSpec,
    LLMTimeout,
    LLMUnavailable,
    StreamEvent,
    ToolCall,
)
from cache_actors.engine.tool_calls import ContentDelta, FunctionTool, ToolCallParser, render_messages, tool_call_format
from deployments.common.llm_wire import LLMHandles
from deployments.common.serve_calls import call_as_own_request

LLM_APP = "llm"
LLM_DEPLOYMENT = "LLMServer"


def backend_request(spec: LLMRequestSpec, *, live: bool = True) -> dict[str, Any]:
    """The `LLMRequest` fields for ``spec`` (a plain dict crosses the handle).

    ``live`` False: the replica sends the text as one delta at the end (a
    caller that waits for the whole answer saves a stream item per token).
    """
    request: dict[str, Any] = {
        "stream_deltas": live,
        "sampling": {"max_new_tokens": spec.max_tokens, "temperature": spec.temperature, "top_p": spec.top_p,
                     "stop": list(spec.stop), "seed": spec.seed},
        "tenant_id": spec.tenant_id,
        "request_id": spec.metadata.get("request_id", ""),
    }
    if spec.messages is not None:
        tools = [FunctionTool(t.name, t.description, dict(t.parameters)) for t in spec.tools]
        request["messages"] = render_messages(spec.messages, tools)
        calls = tool_call_format(tools, spec.tool_choice)  # None when there are no tools or the choice is none
        if calls is not None:
            request["response_format"] = calls
    else:
        request["prompt"] = spec.prompt
    if spec.json_schema is not None and "response_format" not in request:
        request["response_format"] = spec.response_format()
    return request


def _calls_possible(spec: LLMRequestSpec) -> bool:
    return bool(spec.tools) and spec.tool_choice != "none"


class LLMHandleClient:
    """`LLMClient` over ``serve.get_deployment_handle("LLMServer", app_name="llm")``."""

    def __init__(self, app_name: str = LLM_APP, deployment: str = LLM_DEPLOYMENT, handle: Any = None) -> None:
        self._app_name = app_name
        self._deployment = deployment
        # by value over gRPC unless too large (deployments.common.llm_wire); looked up on first use when not given
        self._handles: LLMHandles | None = None if handle is None else LLMHandles(handle)

    def _streaming_handle(self, request: dict[str, Any]) -> Any:
        if self._handles is None:
            from ray import serve

            try:
                handle = serve.get_deployment_handle(self._deployment, app_name=self._app_name)
            except Exception as exc:  # noqa: BLE001 - Serve raises several kinds for "not deployed"
                raise LLMUnavailable(f"the {self._app_name} application is not available: {exc}") from exc
            self._handles = LLMHandles(handle)
        return self._handles.streamed(request)

    async def generate(self, spec: LLMRequestSpec) -> Generation:
        done: Generation | None = None
        async for event in self._events(spec, live=False):
            if event.done is not None:
                done = event.done
        if done is None:  # pragma: no cover - stream() always ends with done or raises
            raise LLMUnavailable("the LLM stream ended without a result")
        return done

    def stream(self, spec: LLMRequestSpec) -> AsyncIterator[StreamEvent]:
        """Deltas, then the whole `Generation`; raises `LLMTimeout` past ``spec.timeout_s``."""
        return self._events(spec, live=True)

    async def _events(self, spec: LLMRequestSpec, *, live: bool) -> AsyncIterator[StreamEvent]:
        started = time.perf_counter()
        deadline = started + spec.timeout_s
        reader = _OutputReader(ToolCallParser() if _calls_possible(spec) else None)
        try:
            request = backend_request(spec, live=live)
            events = call_as_own_request(self._streaming_handle(request).generate_stream.remote, request)
        except LLMError:
            raise
        except Exception as exc:  # noqa: BLE001 - Serve's errors when the app is gone
            raise LLMUnavailable(f"cannot call the LLM: {_short(exc)}") from exc
        async with aclosing(_aiter(events)) as stream:
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise LLMTimeout(f"the LLM did not finish within {spec.timeout_s:g} s")
                try:
                    event = await asyncio.wait_for(anext(stream), timeout=remaining)
                except StopAsyncIteration:
                    raise LLMUnavailable("the LLM stream ended without a result") from None
                except TimeoutError:
                    raise LLMTimeout(f"the LLM did not finish within {spec.timeout_s:g} s") from None
                except ValueError as exc:  # the server refused the request (e.g. over the context)
                    raise LLMError(f"the LLM refused the request: {_short(exc)}") from exc
                except Exception as exc:  # noqa: BLE001 - replica died, overloaded, app deleted
                    raise LLMUnavailable(f"the LLM failed: {_short(exc)}") from exc
                if event.get("type") == "delta":
                    for text in reader.delta(str(event.get("text", ""))):
                        yield StreamEvent(delta=text)
                elif event.get("type") == "done":
                    rest, generation = reader.done(event, latency_ms=(time.perf_counter() - started) * 1000)
                    for text in rest:
                        yield StreamEvent(delta=text)
                    yield StreamEvent(done=generation)
                    return


class _OutputReader:
    """Turns the backend's events into content deltas and the final `Generation` (tool call parsed out)."""

    def __init__(self, parser: ToolCallParser | None) -> None:
        self._parser = parser
        self._parts: list[str] = []

    def delta(self, text: str) -> list[str]:
        self._parts.append(text)
        if self._parser is None:
            return [text]
        return [piece.text for piece in self._parser.feed(text) if isinstance(piece, ContentDelta)]

    def done(self, event: dict[str, Any], *, latency_ms: float) -> tuple[list[str], Generation]:
        text = str(event.get("text", "".join(self._parts)))
        finish_reason = str(event.get("finish_reason", "stop"))
        rest: list[str] = []
        calls: tuple[ToolCall, ...] = ()
        if self._parser is not None:
            pieces, parsed = self._parser.finish()
            rest = [piece.text for piece in pieces if isinstance(piece, ContentDelta)]
            text = parsed.content
            calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in parsed.calls)
            if calls and parsed.calls[0].complete and finish_reason == "stop":
                finish_reason = "tool_calls"
        return rest, Generation(
            text=text,
            tool_calls=calls,
            usage=GenerationUsage(prompt_tokens=int(event.get("prompt_tokens", 0)),
                                  completion_tokens=int(event.get("completion_tokens", 0)),
                                  cached_tokens=int(event.get("cached_tokens", 0))),
            finish_reason=finish_reason,
            ttft_ms=event.get("ttft_ms"),
            latency_ms=latency_ms,
            model=str(event.get("model", "")),
        )


async def _aiter(events: Any) -> AsyncIterator[dict[str, Any]]:
    """A Serve streaming response as an async generator (closing it cancels the call)."""
    try:
        async for event in events:
            yield event
    finally:
        events.cancel()


def _short(exc: BaseException) -> str:
    """The reason on one line, bounded. A `RayTaskError` (what a failed replica call raises, also an instance of
    the replica's exception class) prints the replica's traceback, so its ``cause`` is quoted instead."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
