"""``/v1/...``: the LLM's OpenAI API on the gateway, so OpenAI clients need one base URL and an API key.

``OpenAI(base_url="http://HOST:8000/v1", api_key=KEY)`` works as it does
against OpenAI: the key (or an access token) is the bearer credential, the
key's ``llm`` scope and the tenant's rate limit for ``llm`` apply, and the
tenant salts the KV cache's keys. ``/api/v1/llm/...`` is the same API under
the gateway's service paths. Both run the request through the OpenAI app the
gateway builds over the model replicas (`deployments.gateway.llm_front`);
errors before the app answers (credentials, scope, rate limit, the LLM not
deployed) have the gateway's uniform body, the app's own have OpenAI's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Request, Response

from business_modules.auth import Principal
from deployments.common.forwarding import FORWARDED_HEADERS, ForwardedResponse, stream_asgi
from deployments.gateway.deps import PrincipalDep, StateDep
from deployments.common.request_id import REQUEST_ID_HEADER
from deployments.gateway.forward import admit, streamed_or_whole, to_response
from deployments.gateway.llm_front import OPENAI_SERVICE, OpenAIFront
from deployments.gateway.services import ServiceTimeout, ServiceUnavailable
from deployments.gateway.state import GatewayState

router = APIRouter(tags=["llm"])

OPENAI_PREFIX = "/v1"
METHODS = ["GET", "POST"]


async def serve_openai(state: GatewayState, request: Request, principal: Principal, path: str) -> Response:
    """Admit the caller for the ``llm`` service and run the request through the OpenAI app."""
    caller, decision = await admit(state, request, principal, OPENAI_SERVICE)
    front: OpenAIFront | None = state.openai_front
    if front is None:
        raise ServiceUnavailable(OPENAI_SERVICE, "this gateway serves no OpenAI API")
    app = await front.app()
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    headers[REQUEST_ID_HEADER] = caller.request_id
    stream = stream_asgi(app, method=request.method, path="/" + path.lstrip("/"), body=await request.body(),
                         query=list(request.query_params.multi_items()), headers=headers, caller=caller.to_dict())
    timeout_s = state.settings.gateway_llm_timeout_s
    try:  # a long non-streamed completion is one head: a budget of its own, not a service call's
        head = await asyncio.wait_for(anext(stream), timeout=timeout_s)
    except asyncio.TimeoutError:
        await stream.aclose()
        raise ServiceTimeout(OPENAI_SERVICE, f"no answer within {timeout_s:g} s") from None
    assert isinstance(head, ForwardedResponse)  # stream_asgi yields the head first
    result, chunks = await streamed_or_whole(head, _body(stream), caller.request_id)
    return to_response(result, chunks, decision)


async def _body(stream: AsyncIterator[ForwardedResponse | bytes]) -> AsyncIterator[bytes]:
    """The body chunks; closing this (the client left) closes the app's stream, which ends the generation."""
    async with aclosing(stream):
        async for chunk in stream:
            if isinstance(chunk, bytes):
                yield chunk


async def openai_api(path: str, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    return await serve_openai(state, request, principal, path)


for _method in METHODS:
    router.add_api_route(
        OPENAI_PREFIX + "/{path:path}", openai_api, methods=[_method], operation_id=f"openai_{_method.lower()}",
        summary="The LLM's OpenAI-compatible API",
        description="`/v1/models`, `/v1/completions`, `/v1/chat/completions`, `/v1/tokenize`, ... of the LLM "
                    "(each documented below when the LLM runs). Needs an API key or token with the `llm` scope, "
                    "sent as `Authorization: Bearer` (OpenAI clients' `api_key`) or `X-API-Key`.",
    )
