"""Typed shapes of the auth domain: users, API keys, principals, tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from business_modules.auth.errors import InvalidAuthInput

ALL_SCOPES = "*"
"""The scope that grants every service."""

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCOPE_RE = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,31})$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024


def check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise InvalidAuthInput("Username must be 1-64 characters of letters, digits and _ . @ -")
    return username


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise InvalidAuthInput("Tenant must be 1-64 characters of letters, digits and _ . -")
    return tenant


def check_password(password: str) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidAuthInput(f"Password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    return password


def normalize_scopes(scopes: object) -> tuple[str, ...]:
    """Sorted, de-duplicated scopes; each is a service name (``redundancy``) or ``*``.

    Raises:
        InvalidAuthInput: an empty list or a malformed scope.
    """
    if isinstance(scopes, str):
        scopes = [part for part in re.split(r"[\s,]+", scopes) if part]
    if not isinstance(scopes, (list, tuple, set, frozenset)) or not scopes:
        raise InvalidAuthInput("Give at least one scope: a service name such as 'redundancy', or '*' for all")
    bad = [scope for scope in scopes if not isinstance(scope, str) or not SCOPE_RE.match(scope)]
    if bad:
        raise InvalidAuthInput(f"Malformed scope(s) {bad}: use lowercase service names or '*'")
    return tuple(sorted(set(scopes)))


def effective_scopes(granted: Iterable[str], current: Iterable[str]) -> frozenset[str]:
    """What a credential may do now: the scopes it was `granted`, within those its user holds `current`ly.

    A token or key outlives changes to its user; intersecting on every request
    means narrowing a user's scopes narrows their tokens and keys at once.
    """
    granted, current = frozenset(granted), frozenset(current)
    if ALL_SCOPES in current:
        return granted
    if ALL_SCOPES in granted:
        return current
    return granted & current


def scopes_allow(scopes: tuple[str, ...] | frozenset[str], service: str) -> bool:
    """Whether `scopes` grant `service`."""
    return ALL_SCOPES in scopes or service in scopes


@dataclass(frozen=True, slots=True)
class User:
    """A user, without its password hash."""

    username: str
    tenant: str
    scopes: tuple[str, ...]
    is_active: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's metadata; the key itself is only ever shown once, at creation."""

    key_id: str
    username: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """What `create_api_key` returns: the metadata and the secret to hand over once."""

    key: ApiKey
    secret: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by a token or an API key."""

    subject: str
    tenant: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    method: str = "jwt"
    key_id: str | None = None

    def allows(self, service: str) -> bool:
        return scopes_allow(self.scopes, service)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A signed bearer token and its lifetime in seconds."""

    access_token: str
    expires_in: int
    token_type: str = "bearer"
