"""Domain errors of authentication and authorisation.

The gateway maps each to an HTTP status in one place (deployments/gateway/errors.py):
authentication failures -> 401, missing scope -> 403, conflicts -> 409,
unknown things -> 404, bad input -> 400/422.
"""

from __future__ import annotations


class AuthError(Exception):
    """Base of every auth error."""


class AuthenticationError(AuthError):
    """Who is calling cannot be established (401)."""


class InvalidCredentials(AuthenticationError):
    """Wrong username or password, or the user is disabled (one message for all)."""


class InvalidToken(AuthenticationError):
    """A bearer token that is malformed, forged, for another audience, expired, or whose user is
    disabled, removed or moved to another tenant. Messages are ours, never PyJWT's."""


class TokenExpired(InvalidToken):
    """A bearer token past its ``exp``."""


class InvalidApiKey(AuthenticationError):
    """An API key that is malformed, unknown, revoked, expired or whose owner is disabled."""


class MissingCredentials(AuthenticationError):
    """Neither a bearer token nor an API key was sent."""


class InsufficientScope(AuthError):
    """The caller is known but may not use this service (403)."""


class UserExists(AuthError):
    """A user with this name already exists (409)."""


class UnknownUser(AuthError):
    """No user with this name (404)."""


class ApiKeyNotFound(AuthError):
    """No API key with this id (404)."""


class InvalidAuthInput(AuthError, ValueError):
    """A bad username, password, scope or tenant given to create something (422)."""
