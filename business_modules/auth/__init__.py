"""Authentication and authorisation: users (argon2 passwords), JWT access
tokens (HS256), API keys stored as sha256 hashes, scopes per service.

A scope is a service name (``redundancy``, ``export`` ...) or ``*`` for all.
Each user belongs to a tenant (rate limits and data are per tenant); an API
key acts for its user, with the user's scopes or fewer.
"""

from business_modules.auth.errors import (
    ApiKeyNotFound,
    AuthenticationError,
    AuthError,
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
from business_modules.auth.models import ALL_SCOPES, AccessToken, ApiKey, NewApiKey, Principal, User
from business_modules.auth.service import AuthService, require_scope

__all__ = [
    "ALL_SCOPES",
    "AccessToken",
    "ApiKey",
    "ApiKeyNotFound",
    "AuthError",
    "AuthService",
    "AuthenticationError",
    "InsufficientScope",
    "InvalidApiKey",
    "InvalidAuthInput",
    "InvalidCredentials",
    "InvalidToken",
    "MissingCredentials",
    "NewApiKey",
    "Principal",
    "TokenExpired",
    "UnknownUser",
    "User",
    "UserExists",
    "require_scope",
]
