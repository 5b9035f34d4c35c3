"""The OpenAI app over an `LLMServer` deployment handle: one construction for the ingress and the gateway.

Both serve the same API (`deployments.llm.app.LLMIngress` on its own route,
`deployments.gateway.llm_front` at the gateway's ``/v1``), so both build it
here. Imports neither torch nor the engine: the gateway loads this module.

A request that streams (`LLMRequest.stream_deltas`) calls ``generate_stream`` as a
Serve streaming call; one that does not calls ``generate_events`` and gets
its events in one reply (`ReplyEvents`). Measured on 2 cores (README, "Against
vLLM-CPU"): a streamed call for a whole answer cost the caller ~1 ms and the
replica ~2 ms more CPU than a plain call, CPU the model's threads need.
Both go by value over the replica's gRPC server (`by_value`), except a
request that may be too large for it (`wire_bytes_bound`).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI

from cache_actors.engine.overload import BatcherOverloaded
from cache_actors.engine.requests import LLMRequest
from deployments.common.grpc_limits import GRPC_REQUEST_MAX_BYTES
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


def by_value(server: Any) -> Any:
    """``server`` (a deployment handle) calling its replicas by value over their gRPC servers.

    Measured on 2 cores against Ray actor calls (the default, by reference),
    interleaved from one driver: a one-token answer 13.3 against 16.7 ms,
    its first streamed event 11.9 against 15.1 ms, and 16 streamed answers at
    once 415 against 377 tok/s. Plain pickle, as the gateway's calls to the
    services (`deployments.gateway.services`).
    """
    return server.options(_by_reference=False, request_serialization="pickle", response_serialization="pickle")


def wire_bytes_bound(request: LLMRequest) -> int:
    """More than ``request`` can weigh pickled: 4 bytes a character, 10 a token id, and room for the rest.

    A replica's gRPC server may refuse what is over 4 MiB (its receive cap
    when its runtime environment does not raise it:
    `deployments.common.grpc_limits`); a request that may weigh that much
    goes by Ray actor call, which has no cap, so the replica can still
    answer it (most often a 400: longer than the model's context).
    """
    text = len(request.prompt or "") + sum(len(str(value)) + 16 for message in request.messages or ()
                                           for value in message.values())
    text += sum(len(stop) for stop in request.sampling.stop)
    size = 4 * text + 10 * len(request.prompt_token_ids or ()) + 4096
    if request.response_format is not None:
        size += len(pickle.dumps(request.response_format))
    return size


def openai_app_over(server: Any, options: dict[str, Any]) -> FastAPI:
    """The app answering through ``server`` (an `LLMServer` handle) with `build_openai_app` ``options``."""
    whole = {True: by_value(server), False: server}  # keyed by "small enough for gRPC"
    streamed = {small: handle.options(stream=True) for small, handle in whole.items()}

    def backend(request: LLMRequest) -> Any:
        small = wire_bytes_bound(request) <= GRPC_REQUEST_MAX_BYTES
        # Each choice of an ``n > 1`` request is its own call (see deployments.common.serve_calls).
        if request.stream_deltas:
            return call_as_own_request(streamed[small].generate_stream.remote, request)
        return ReplyEvents(call_as_own_request(whole[small].generate_events.remote, request))

    async def tokenizer_call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        # A keyword, not the router's ``request``: the cache-aware router leaves it to power of two choices.
        return await getattr(server, method).remote(body=body)

    return build_openai_app(backend, **options, overloaded_errors=(BatcherOverloaded,), tokenizer_fn=tokenizer_call)
