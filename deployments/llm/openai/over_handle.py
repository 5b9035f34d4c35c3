"""The OpenAI app over an `LLMServer` deployment handle: one construction for the ingress and the gateway.

Both serve the same API (`deployments.llm.app.LLMIngress` on its own route,
`deployments.gateway.llm_front` at the gateway's ``/v1``), so both build it
here. Imports neither torch nor the engine: the gateway loads this module.

A request that streams (`LLMRequest.stream_deltas`) calls ``generate_stream`` as a
Serve streaming call; one that does not calls ``generate_events`` and gets
its events in one reply (`ReplyEvents`). Measured on 2 cores (README, "Against
vLLM-CPU"): a streamed call for a whole answer cost the caller ~1 ms and the
replica ~2 ms more CPU than a plain call, CPU the model's threads need.
Both go by value over the replica's gRPC server, except a request that may
be too large for it (`deployments.common.llm_wire`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from cache_actors.engine.overload import BatcherOverloaded
from cache_actors.engine.requests import LLMRequest
from deployments.common.llm_wire import LLMHandles
from deployments.common.serve_calls import call_as_own_request
from deployments.llm.openai.routes import build_openai_app


class ReplyEvents:
    """A ``generate_events`` reply read as the event iterator `ChoiceStream` expects.

    Not an async generator: `ChoiceStream.close` may run before the first
    ``__anext__`` (a sibling choice of an ``n > 1`` request was refused), when
    nothing awaits the call, and the replica must still stop generating, so
    ``aclose`` cancels the call whenever its reply was not read.
    """

    def __init__(self, response: Any) -> None:
        self._response = response
        self._events: Iterator[dict[str, Any]] | None = None  # set once the reply is in

    def __aiter__(self) -> ReplyEvents:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._events is None:
            # A task cancelled while awaiting a DeploymentResponse cancels it (the client went away: the
            # replica frees the row; tests/deployments/test_llm_api.py pins it on real Serve).
            self._events = iter(await self._response)
        event = next(self._events, None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if self._events is None:
            self._response.cancel()


def openai_app_over(server: Any, options: dict[str, Any]) -> FastAPI:
    """The app answering through ``server`` (an `LLMServer` handle) with `build_openai_app` ``options``."""
    handles = LLMHandles(server)

    def backend(request: LLMRequest) -> Any:
        # Each choice of an ``n > 1`` request is its own call (see deployments.common.serve_calls).
        if request.stream_deltas:
            return call_as_own_request(handles.streamed(request).generate_stream.remote, request)
        return ReplyEvents(call_as_own_request(handles.whole(request).generate_events.remote, request))

    async def tokenizer_call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        # A keyword, not the router's ``request``: the cache-aware router leaves it to power of two choices.
        return await getattr(server, method).remote(body=body)

    return build_openai_app(backend, **options, overloaded_errors=(BatcherOverloaded,), tokenizer_fn=tokenizer_call)
