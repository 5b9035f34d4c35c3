"""The OpenAI app over the model replica it runs in: no Serve call between the HTTP handler and the batcher.

`deployments.llm.front.LLMServerFront` serves it. Measured on 2 cores
(README, "Against vLLM-CPU"), a cached request's first token crossed Serve
twice before this: the proxy (or HAProxy) to the ingress's process, then a
handle call to the model's, and the same two hops back for every streamed
chunk; here the handler calls the replica's ``generate_stream`` in its own
event loop. The backend contract is the handle's: an async iterator of
events, a ValueError before the first one for a refused request, and
``aclose`` stops the generation (the batcher frees the row).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from fastapi import FastAPI

from cache_actors.engine.overload import BatcherOverloaded
from cache_actors.engine.requests import LLMRequest
from deployments.llm.openai.routes import build_openai_app


class LocalModel(Protocol):
    """What the app needs of the replica it runs in (`deployments.llm.server.LLMReplica`)."""

    def generate_stream(self, request: LLMRequest | Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def detokenize(self, body: Mapping[str, Any]) -> dict[str, Any]: ...


def openai_app_in_process(model: LocalModel, options: dict[str, Any]) -> FastAPI:
    """The app answering through ``model``'s own methods with `build_openai_app` ``options``."""

    def backend(request: LLMRequest) -> AsyncIterator[dict[str, Any]]:
        # Not started until the app reads it: a choice closed before its first event never reaches the batcher.
        return model.generate_stream(request)

    async def tokenizer_call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        return getattr(model, method)(body)

    return build_openai_app(backend, **options, overloaded_errors=(BatcherOverloaded,), tokenizer_fn=tokenizer_call)
