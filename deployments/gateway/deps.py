"""Shared FastAPI dependencies of the gateway, as ``Annotated`` aliases.

``StateDep`` is the replica's `GatewayState`; ``PrincipalDep`` authenticates
the caller with a bearer token or an ``X-API-Key`` (401 otherwise);
``ServiceDep`` validates the ``{service}`` path parameter (404 for an unknown
one). Tests can override any of them with ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from starlette.exceptions import HTTPException
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from business_modules.auth import MissingCredentials, Principal
from business_modules.auth.api_keys import parse_key_id
from business_modules.ratelimit import RateLimitDecision
from deployments.gateway.errors import RateLimited
from deployments.gateway.state import GatewayState

bearer_scheme = HTTPBearer(auto_error=False, description="Access token from POST /api/v1/auth/login, or an API key "
                                                       "(as OpenAI clients send theirs).")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="API key from `blatam keys create` (scopes per service).")


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_principal(
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    """The authenticated caller; a bearer credential wins when both are sent.

    The bearer credential may be an access token or an API key: OpenAI
    clients send their ``api_key`` as ``Authorization: Bearer``, so
    ``OpenAI(base_url=".../api/v1/llm", api_key=KEY)`` works through the gateway.
    Either is checked against the user's current state in the database (a
    disabled user or a revoked key fails on its next request).
    """
    if bearer is not None and bearer.credentials:
        if parse_key_id(bearer.credentials) is not None:
            return await state.auth.authenticate_api_key(bearer.credentials)
        return await state.auth.authenticate_token(bearer.credentials)
    if api_key:
        return await state.auth.authenticate_api_key(api_key)
    raise MissingCredentials("Send a bearer token (Authorization: Bearer ...) or an API key (X-API-Key)")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


RESERVED_PREFIXES = frozenset({"auth", "gateway"})
"""``/api/v1/<name>`` of the gateway's own routes, never a service."""


def get_service(service: str, request: Request, state: StateDep) -> str:
    """The ``{service}`` path parameter, checked against the known services (aliases resolved).

    A gateway route called with the wrong method (``GET /api/v1/auth/login``)
    also lands on the catch-all proxy route: answer 405 with ``Allow`` (or 404)
    as if the catch-all were not there. ``app.state.own_routes`` maps the
    gateway's own paths to their methods (built by `create_app`).
    """
    if service in RESERVED_PREFIXES:
        allowed = request.app.state.own_routes.get(request.url.path.rstrip("/"))
        if allowed:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        raise HTTPException(404)
    service = state.services.registry.canonical(service)
    state.services.registry.app_for(service)
    return service


ServiceDep = Annotated[str, Depends(get_service)]


def client_address(request: Request) -> str:
    """The peer address (what login attempts are counted by)."""
    return request.client.host if request.client else "unknown"


async def enforce_rate_limit(state: GatewayState, request: Request, *, key: str, limit: str,
                             what: str) -> RateLimitDecision:
    """Count one hit on `key`; raise `RateLimited` (429) when over `limit`."""
    decision = await state.limiter.hit(key, limit)
    request.state.rate_limit = decision
    if not decision.allowed:
        raise RateLimited(decision, what)
    return decision
