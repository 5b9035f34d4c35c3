"""The ONE place where the gateway maps domain errors to HTTP.

Each domain exception (auth, rate limits, storage, services) gets a status and
a stable ``code``; the body is always the uniform
``{"error": {"code", "message", "request_id"}}`` (`deployments.common.errors`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from business_modules.auth import (
    ApiKeyNotFound,
    AuthenticationError,
    InsufficientScope,
    InvalidApiKey,
    InvalidAuthInput,
    InvalidCredentials,
    InvalidToken,
    MissingCredentials,
    TokenExpired,
    UnknownUser,
    UserExists,
)
from business_modules.ratelimit import RateLimitDecision
from business_modules.storage import StorageError, StorageTimeoutError, StorageUnavailableError
from deployments.common.errors import ErrorSpec, install_error_handlers
from deployments.gateway.services import ServiceTimeout, ServiceUnavailable, UnknownService


class RateLimited(Exception):
    """The tenant used up its limit for this route (429)."""

    def __init__(self, decision: RateLimitDecision, what: str):
        super().__init__(f"Rate limit of {decision.limit} requests exceeded for {what}; "
                         f"retry in {decision.retry_after_s} s")
        self.decision = decision


class UnknownTargetSystem(Exception):
    """``target_system`` of the generic route is not one of the original names (400)."""


class BadEndpoint(Exception):
    """``endpoint`` of the generic route is not a plain absolute path (400)."""


def rate_limit_headers(decision: RateLimitDecision) -> dict[str, str]:
    """``X-RateLimit-*`` headers (and ``Retry-After`` on refusal) for a decision."""
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(int(decision.reset_at)),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


def _retry_after(exc: BaseException) -> Mapping[str, str]:
    seconds = getattr(exc, "retry_after_s", None)
    return {"Retry-After": str(seconds)} if seconds else {}


_BEARER = {"WWW-Authenticate": "Bearer"}

DOMAIN_ERRORS: dict[type[BaseException], ErrorSpec] = {
    # Most specific first is not required: Starlette picks the closest class in the MRO.
    MissingCredentials: ErrorSpec(401, "not_authenticated", _BEARER),
    InvalidCredentials: ErrorSpec(401, "invalid_credentials", _BEARER),
    TokenExpired: ErrorSpec(401, "token_expired", _BEARER),
    InvalidToken: ErrorSpec(401, "invalid_token", _BEARER),
    InvalidApiKey: ErrorSpec(401, "invalid_api_key", _BEARER),
    AuthenticationError: ErrorSpec(401, "not_authenticated", _BEARER),
    InsufficientScope: ErrorSpec(403, "insufficient_scope"),
    UserExists: ErrorSpec(409, "user_exists"),
    UnknownUser: ErrorSpec(404, "unknown_user"),
    ApiKeyNotFound: ErrorSpec(404, "api_key_not_found"),
    InvalidAuthInput: ErrorSpec(422, "validation_error"),
    RateLimited: ErrorSpec(429, "rate_limited", lambda exc: rate_limit_headers(exc.decision)),  # type: ignore[attr-defined]
    UnknownService: ErrorSpec(404, "unknown_service"),
    UnknownTargetSystem: ErrorSpec(400, "unknown_target_system"),
    BadEndpoint: ErrorSpec(400, "bad_endpoint"),
    ServiceTimeout: ErrorSpec(504, "service_timeout"),
    ServiceUnavailable: ErrorSpec(503, "service_unavailable", _retry_after),
    StorageTimeoutError: ErrorSpec(503, "database_timeout", {"Retry-After": "1"}, "The database is busy; retry"),
    StorageUnavailableError: ErrorSpec(503, "database_unavailable", {"Retry-After": "5"},
                                       "The database is unavailable; retry later"),
    StorageError: ErrorSpec(500, "database_error", message="Database error; quote the request id when reporting it"),
}


def install_gateway_errors(app: FastAPI) -> None:
    """Install the uniform body for every error the gateway can meet."""
    install_error_handlers(app, DOMAIN_ERRORS)
