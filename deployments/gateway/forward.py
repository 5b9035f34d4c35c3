"""Forward one authenticated request to a service and shape the answer.

Shared by ``/api/v1/<service>/...`` and the original generic route: scope
check (403), rate limit per tenant and service (429), the call through the
service client (503/504 on failure), and the uniform error body for any
error response a service sends in another shape. For the services the
gateway streams, an event stream comes back as an iterator of chunks;
anything else is collected as it would be without streaming.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request, Response
from starlette.responses import StreamingResponse

from business_modules.auth import Principal, require_scope
from business_modules.ratelimit import RateLimitDecision
from deployments.common.errors import code_for_status, error_body
from deployments.common.forwarding import Caller, ForwardedResponse
from deployments.common.request_id import REQUEST_ID_HEADER, get_request_id
from deployments.gateway.deps import enforce_rate_limit
from deployments.gateway.errors import rate_limit_headers
from deployments.gateway.state import GatewayState

# Response headers that describe the hop, not the content: the gateway sets its own.
_HOP_HEADERS = {"content-length", "connection", "keep-alive", "transfer-encoding", "server", "date",
                REQUEST_ID_HEADER}


async def admit(state: GatewayState, request: Request, principal: Principal, service: str) -> tuple[Caller, RateLimitDecision]:
    """Scope check (403) and rate limit (429); the caller the service will see."""
    require_scope(principal, service)
    decision = await enforce_rate_limit(state, request, key=f"{principal.tenant}:{service}",
                                        limit=state.settings.rate_limit_for(service),
                                        what=f"service {service!r} (tenant {principal.tenant!r})")
    caller = Caller(tenant=principal.tenant, subject=principal.subject, scopes=tuple(sorted(principal.scopes)),
                    request_id=get_request_id(request))
    return caller, decision


async def forward(
    state: GatewayState,
    request: Request,
    principal: Principal,
    service: str,
    *,
    method: str,
    path: str,
    body: bytes,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    stream: bool = False,
) -> tuple[ForwardedResponse, AsyncIterator[bytes] | None, RateLimitDecision]:
    """Authorise, rate-limit and forward: ``(response, chunks, decision)``.

    With ``stream`` the call goes through the service's stream; ``chunks`` is
    then the body of a successful ``text/event-stream`` (the response carries
    only the head). In every other case ``chunks`` is None and the response
    carries the whole (normalised) body.
    """
    caller, decision = await admit(state, request, principal, service)
    call = dict(method=method, path=path, body=body, query=query, headers={**headers, REQUEST_ID_HEADER: caller.request_id},
                caller=caller.to_dict(), timeout_s=state.settings.gateway_request_timeout_s)
    if not stream:
        return uniform_errors(await state.services.forward(service, **call), caller.request_id), None, decision
    head, chunks = await state.services.forward_stream(service, **call)
    return *(await streamed_or_whole(head, chunks, caller.request_id)), decision


async def streamed_or_whole(head: ForwardedResponse, chunks: AsyncIterator[bytes], request_id: str | None,
                            ) -> tuple[ForwardedResponse, AsyncIterator[bytes] | None]:
    """A successful event stream goes on as ``(head, chunks)``; anything else is collected and normalised."""
    if head.status_code < 400 and "text/event-stream" in (head.header("content-type") or ""):
        return head, chunks
    async with aclosing(chunks):
        head.body = b"".join([chunk async for chunk in chunks])
    return uniform_errors(head, request_id), None


def to_response(result: ForwardedResponse, chunks: AsyncIterator[bytes] | None,
                decision: RateLimitDecision) -> Response:
    """The client's response: streamed when there are `chunks`, with the service's and the limit's headers."""
    response: Response
    if chunks is not None:  # server-sent events: passed on as the service produces them
        response = StreamingResponse(chunks, status_code=result.status_code)
    else:
        response = Response(content=result.body, status_code=result.status_code)
    for name, value in pass_through_headers(result):
        response.headers.append(name, value)
    response.headers.update(rate_limit_headers(decision))
    return response


def pass_through_headers(response: ForwardedResponse) -> list[tuple[str, str]]:
    """The service's response headers minus the hop-by-hop ones."""
    return [(k, v) for k, v in response.headers if k.lower() not in _HOP_HEADERS]


def uniform_errors(response: ForwardedResponse, request_id: str | None) -> ForwardedResponse:
    """Rewrite an error response that is not already in the uniform shape."""
    if response.status_code < 400:
        return response
    parsed: Any = None
    if "json" in (response.header("content-type") or ""):
        try:
            parsed = json.loads(response.body or b"null")
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "code" in parsed["error"]:
        parsed["error"]["request_id"] = request_id
        body = parsed
    else:
        detail = parsed.get("detail") if isinstance(parsed, dict) else None
        if not isinstance(detail, str):
            detail = json.dumps(detail) if detail is not None else response.body.decode("utf-8", "replace")[:300]
        message = detail.strip() or code_for_status(response.status_code).replace("_", " ")
        body = error_body(code_for_status(response.status_code), message, request_id)
    headers = [(k, v) for k, v in response.headers if k.lower() != "content-type"]
    return ForwardedResponse(response.status_code, [*headers, ("content-type", "application/json")],
                             json.dumps(body).encode())
