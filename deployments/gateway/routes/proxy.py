"""``/api/v1/<service>/<path>``: any method, forwarded to the service's own route ``/<path>``.

For the services in ``GATEWAY_STREAM_SERVICES`` the call goes through the
service's stream, so server-sent events reach the client as they are
produced instead of when the response is complete. The LLM is served by the
gateway's own OpenAI app (`deployments.gateway.routes.openai`), not forwarded.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from deployments.common.forwarding import FORWARDED_HEADERS
from deployments.gateway.deps import PrincipalDep, ServiceDep, StateDep
from deployments.gateway.forward import forward, to_response
from deployments.gateway.llm_front import OPENAI_SERVICE
from deployments.gateway.routes.openai import serve_openai

router = APIRouter(tags=["services"])

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def _proxy(service: str, path: str, request: Request, principal, state) -> Response:
    if service == OPENAI_SERVICE and state.openai_front is not None:  # the LLM: served here, one hop fewer
        return await serve_openai(state, request, principal, path)
    body = await request.body()
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    result, chunks, decision = await forward(
        state, request, principal, service, method=request.method, path="/" + path, body=body,
        query=list(request.query_params.multi_items()), headers=headers,
        stream=service in state.settings.gateway_stream_services,
    )
    return to_response(result, chunks, decision)


async def proxy(service: ServiceDep, path: str, request: Request, principal: PrincipalDep,
                state: StateDep) -> Response:
    return await _proxy(service, path, request, principal, state)


# One route per method, each with its own operation id (one route for all five gave the five
# documented operations one id, which OpenAPI forbids and FastAPI warned about).
for _method in METHODS:
    router.add_api_route(
        "/api/v1/{service}/{path:path}", proxy, methods=[_method], operation_id=f"call_service_{_method.lower()}",
        summary="Call a service route through the gateway",
        description="Forwards to the route `/{path}` of the service's Serve application, with the caller's "
                    "tenant. Needs a bearer token or API key with the service's scope.")


@router.api_route("/api/v1/{service}", methods=METHODS, include_in_schema=False)
async def proxy_root(service: ServiceDep, request: Request, principal: PrincipalDep, state: StateDep) -> Response:
    return await _proxy(service, "", request, principal, state)
