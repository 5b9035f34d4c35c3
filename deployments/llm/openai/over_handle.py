"""The OpenAI app over an `LLMServer` deployment handle: one construction for the ingress and the gateway.

Both serve the same API (`deployments.llm.app.LLMIngress` on its own route,
`deployments.gateway.llm_front` at the gateway's ``/v1``), so both build it
here. Imports neither torch nor the engine: the gateway loads this module.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cache_actors.engine.overload import BatcherOverloaded
from deployments.common.serve_calls import call_as_own_request
from deployments.llm.openai.routes import build_openai_app


def openai_app_over(server: Any, options: dict[str, Any]) -> FastAPI:
    """The app answering through ``server`` (an `LLMServer` handle) with `build_openai_app` ``options``."""
    streaming = server.options(stream=True)

    async def tokenizer_call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        # A keyword, not the router's ``request``: the cache-aware router leaves it to power of two choices.
        return await getattr(server, method).remote(body=body)

    return build_openai_app(
        # Each choice of an ``n > 1`` request is its own call (see deployments.common.serve_calls).
        lambda request: call_as_own_request(streaming.generate_stream.remote, request),
        **options, overloaded_errors=(BatcherOverloaded,), tokenizer_fn=tokenizer_call)
