"""``/api/v1/auth``: log in for an access token; see who you are."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from business_modules.auth import InvalidCredentials
from deployments.gateway.deps import PrincipalDep, StateDep, client_address
from deployments.gateway.errors import RateLimited, rate_limit_headers

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class MeOut(BaseModel):
    subject: str
    tenant: str
    scopes: list[str]
    method: str = Field(description="jwt or api_key")
    key_id: str | None = None


@router.post("/login", response_model=TokenOut, summary="Exchange username and password for an access token",
             description="Failed logins are limited per user name and client address (RATE_LIMIT_LOGIN) and, "
                         "more loosely, per client address (RATE_LIMIT_LOGIN_PER_ADDRESS); over either: 429. "
                         "The X-RateLimit-* headers count failures left for this user name.")
async def login(body: LoginIn, request: Request, response: Response, state: StateDep) -> TokenOut:
    address = client_address(request)
    budget = await state.login_throttle.check(username=body.username, address=address)
    request.state.rate_limit = budget.decision
    if not budget.decision.allowed:
        raise RateLimited(budget.decision, budget.what)
    response.headers.update(rate_limit_headers(budget.decision))
    try:
        token = await state.auth.login(username=body.username, password=body.password)
    except InvalidCredentials:
        await state.login_throttle.record_failure(username=body.username, address=address)
        raise
    return TokenOut(access_token=token.access_token, token_type=token.token_type, expires_in=token.expires_in)


@router.get("/me", response_model=MeOut, summary="The authenticated caller")
async def me(principal: PrincipalDep) -> MeOut:
    return MeOut(subject=principal.subject, tenant=principal.tenant, scopes=sorted(principal.scopes),
                 method=principal.method, key_id=principal.key_id)
