"""The gateway's FastAPI application (the original "Integration System")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from deployments.common.body_limit import BodySizeLimitMiddleware
from deployments.common.inline_body import InlineBodyMiddleware
from deployments.common.request_id import RequestIdMiddleware
from deployments.gateway.errors import install_gateway_errors
from deployments.gateway.routes import auth, health, legacy, openai, proxy
from deployments.gateway.routes.docs import install_docs
from deployments.gateway.service_schemas import ServiceSchemas
from deployments.gateway.state import GatewayState

DESCRIPTION = """\
Entry point of the Blatam services. Authenticate with a bearer token from
`POST /api/v1/auth/login` or an `X-API-Key`; call a service at
`/api/v1/<service>/<route>` or through the original `POST /api/v1/gateway/route`,
and the LLM's OpenAI-compatible API at `/v1/...` (an API key as the bearer
credential, as OpenAI clients send theirs).
The routes of every service that runs are listed below under their gateway
paths (`GET /health` says which services are configured). Every error has the
body `{"error": {"code", "message", "request_id"}}`.
"""


def create_app(state: GatewayState, *, echo_request_id: bool = True) -> FastAPI:
    """The gateway app over `state`; the app closes `state` when it shuts down.

    Args:
        echo_request_id: set ``X-Request-ID`` on responses; False behind Serve's
            proxy, which already does (see `deployments.common.request_id`).
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.close()

    # FastAPI's own docs load Swagger UI from a CDN: routes/docs.py serves them offline instead.
    app = FastAPI(title="Blatam Gateway", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.gateway = state
    install_gateway_errors(app)
    install_docs(app, ServiceSchemas(state.services, ttl_s=state.settings.gateway_openapi_ttl_s,
                                     timeout_s=state.settings.gateway_openapi_timeout_s))
    own_routes: dict[str, set[str]] = {}
    for router in (health.router, auth.router, legacy.router, openai.router, proxy.router):
        app.include_router(router)
        for route in router.routes:
            if isinstance(route, APIRoute) and "{" not in route.path:
                own_routes.setdefault(route.path, set()).update(route.methods)
    app.state.own_routes = own_routes
    # add_middleware wraps: the last added runs first, so request ids exist before the size check.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=state.settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=echo_request_id)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    return app
