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
)
from deployments.common.serve_calls import call_as_own_request

LLM_APP = "llm"
LLM_DEPLOYMENT = "LLMServer"


def backend_request(spec: LLMRequestSpec) -> dict[str, Any]:
    """The `LLMRequest` fields for ``spec`` (a plain dict crosses the handle)."""
    request: dict[str, Any] = {
        "sampling": {"max_new_tokens": spec.max_tokens, "temperature": spec.temperature, "top_p": spec.top_p,
                     "stop": list(spec.stop), "seed": spec.seed},
        "tenant_id": spec.tenant_id,
        "request_id": spec.metadata.get("request_id", ""),
    }
    if spec.messages is not None:
        request["messages"] = [dict(m) for m in spec.messages]
    else:
        request["prompt"] = spec.prompt
    if spec.json_schema is not None:
        request["response_format"] = spec.response_format()
    return request


class LLMHandleClient:
    """`LLMClient` over ``serve.get_deployment_handle("LLMServer", app_name="llm")``."""

    def __init__(self, app_name: str = LLM_APP, deployment: str = LLM_DEPLOYMENT, handle: Any = None) -> None:
        self._app_name = app_name
        self._deployment = deployment
        self._handle = handle

    def _streaming_handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            try:
                self._handle = serve.get_deployment_handle(self._deployment, app_name=self._app_name)
            except Exception as exc:  # noqa: BLE001 - Serve raises several kinds for "not deployed"
                raise LLMUnavailable(f"the {self._app_name} application is not available: {exc}") from exc
        return self._handle.options(stream=True)

    async def generate(self, spec: LLMRequestSpec) -> Generation:
        done: Generation | None = None
        async for event in self.stream(spec):
            if event.done is not None:
                done = event.done
        if done is None:  # pragma: no cover - stream() always ends with done or raises
            raise LLMUnavailable("the LLM stream ended without a result")
        return done

    async def stream(self, spec: LLMRequestSpec) -> AsyncIterator[StreamEvent]:
        """Deltas, then the whole `Generation`; raises `LLMTimeout` past ``spec.timeout_s``."""
        started = time.perf_counter()
        deadline = started + spec.timeout_s
        pieces: list[str] = []
        try:
            events = call_as_own_request(self._streaming_handle().generate_stream.remote, backend_request(spec))
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
                    pieces.append(event.get("text", ""))
                    yield StreamEvent(delta=event.get("text", ""))
                elif event.get("type") == "done":
                    yield StreamEvent(done=Generation(
                        text=event.get("text", "".join(pieces)),
                        usage=GenerationUsage(prompt_tokens=int(event.get("prompt_tokens", 0)),
                                              completion_tokens=int(event.get("completion_tokens", 0)),
                                              cached_tokens=int(event.get("cached_tokens", 0))),
                        finish_reason=str(event.get("finish_reason", "stop")),
                        ttft_ms=event.get("ttft_ms"),
                        latency_ms=(time.perf_counter() - started) * 1000,
                        model=str(event.get("model", "")),
                    ))
                    return


async def _aiter(events: Any) -> AsyncIterator[dict[str, Any]]:
    """A Serve streaming response as an async generator (closing it cancels the call)."""
    try:
        async for event in events:
            yield event
    finally:
        events.cancel()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
