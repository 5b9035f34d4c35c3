"""`AuthService`: users, logins, access tokens and API keys over one `Database`.

Password hashing (argon2) runs in a worker thread so a login never blocks the
event loop of the replica.

Every request's credential is checked against the database, not a per-replica
cache: disabling a user or revoking a key (from any replica, or the CLI) takes
effect on the very next request everywhere. A token is one primary-key lookup
of its user, a key one indexed lookup by hash; measured at p50 0.7-0.9 ms on
PostgreSQL on the shared 2-core test machine, next to a gateway overhead of
several ms. A cache with a TTL would save that but let a disabled user or a
revoked key work on other replicas until it expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from business_modules.auth import repository as repo
from business_modules.auth.api_keys import generate_api_key, hash_api_key, parse_key_id
from business_modules.auth.errors import (
    ApiKeyNotFound,
    InsufficientScope,
    InvalidApiKey,
    InvalidAuthInput,
    InvalidCredentials,
    InvalidToken,
    UnknownUser,
    UserExists,
)
from business_modules.auth.models import (
    ALL_SCOPES,
    AccessToken,
    ApiKey,
    NewApiKey,
    Principal,
    User,
    check_password,
    check_tenant,
    check_username,
    effective_scopes,
    normalize_scopes,
)
from business_modules.auth.passwords import dummy_hash, hash_password, verify_password
from business_modules.auth.tokens import issue_access_token, verify_access_token
from business_modules.storage import Database, IntegrityError

MAX_KEY_NAME_CHARS = 100


class AuthService:
    """Authentication and authorisation of Blatam callers."""

    def __init__(
        self,
        db: Database,
        *,
        secret_key: str,
        token_ttl_s: int,
        issuer: str = "blatam",
        audience: str = "blatam-api",
        clock: Callable[[], float] = time.time,
    ):
        self._db = db
        self._secret = secret_key
        self._token_ttl_s = token_ttl_s
        self._issuer = issuer
        self._audience = audience
        self._clock = clock

    # -- users ----------------------------------------------------------------

    async def create_user(
        self, *, username: str, password: str, scopes: Iterable[str] | str, tenant: str | None = None
    ) -> User:
        """Create an active user; the tenant defaults to the username.

        Raises:
            InvalidAuthInput: bad username, password, tenant or scopes.
            UserExists: the name is taken.
        """
        check_username(username)
        check_password(password)
        tenant = check_tenant(tenant if tenant is not None else username)
        normalized = normalize_scopes(scopes)
        password_hash = await asyncio.to_thread(hash_password, password)
        try:
            return await repo.insert_user(
                self._db, username=username, password_hash=password_hash, tenant=tenant, scopes=normalized,
                now=self._clock(),
            )
        except IntegrityError as exc:
            raise UserExists(f"User {username!r} already exists") from exc

    async def list_users(self) -> list[User]:
        return await repo.list_users(self._db)

    async def set_user_active(self, username: str, active: bool) -> None:
        """Enable or disable a user (a disabled user cannot log in; its tokens and keys stop working
        on their next request)."""
        if await repo.set_user_active(self._db, username, active) == 0:
            raise UnknownUser(f"No user {username!r}")

    # -- tokens ---------------------------------------------------------------

    async def login(self, *, username: str, password: str) -> AccessToken:
        """A fresh access token for valid credentials of an active user.

        Raises:
            InvalidCredentials: unknown user, wrong password or disabled user
                (one message, and the same hashing cost, for all three).
        """
        known = isinstance(username, str) and "\x00" not in username  # no stored name has a NUL (nor can have)
        found = await repo.get_user_with_hash(self._db, username) if known else None
        stored_hash = found[1] if found else dummy_hash()
        ok, new_hash = await asyncio.to_thread(verify_password, str(password), stored_hash)
        if found is None or not ok or not found[0].is_active:
            raise InvalidCredentials("Incorrect username or password")
        user = found[0]
        if new_hash is not None:
            await repo.update_password_hash(self._db, user.username, new_hash)
        return issue_access_token(
            subject=user.username, tenant=user.tenant, scopes=user.scopes, secret=self._secret,
            ttl_s=self._token_ttl_s, issuer=self._issuer, audience=self._audience, now=self._clock(),
        )

    def verify_token(self, token: str) -> Principal:
        """The principal a token's signed claims name (`InvalidToken` / `TokenExpired` otherwise).

        Claims only: the user may have been disabled since. Requests go through
        `authenticate_token`.
        """
        return verify_access_token(
            token, secret=self._secret, issuer=self._issuer, audience=self._audience, now=self._clock()
        )

    async def authenticate_token(self, token: str) -> Principal:
        """The principal of a valid token whose user still exists and is enabled.

        Tenant and scopes are the user's current ones (scopes never wider than
        the token's), so a change to the user holds from the next request on.

        Raises:
            TokenExpired: past ``exp``.
            InvalidToken: bad token, or its user is gone, disabled or moved to another tenant.
        """
        claimed = self.verify_token(token)
        user = await repo.get_user(self._db, claimed.subject)
        if user is None or not user.is_active:
            raise InvalidToken("Access token is no longer valid: its user is disabled or was removed")
        if user.tenant != claimed.tenant:
            raise InvalidToken("Access token is no longer valid: its user moved to another tenant; log in again")
        return Principal(subject=user.username, tenant=user.tenant,
                         scopes=effective_scopes(claimed.scopes, user.scopes), method="jwt")

    # -- API keys -------------------------------------------------------------

    async def create_api_key(
        self,
        *,
        username: str,
        name: str,
        scopes: Iterable[str] | str | None = None,
        expires_in_days: float | None = None,
    ) -> NewApiKey:
        """A new key for `username`; its scopes default to (and may not exceed) the user's.

        Raises:
            UnknownUser: no such user.
            InvalidAuthInput: bad name, scopes wider than the user's, bad expiry.
        """
        found = await repo.get_user_with_hash(self._db, username)
        if found is None:
            raise UnknownUser(f"No user {username!r}")
        user = found[0]
        name = name.strip() if isinstance(name, str) else ""
        if not 1 <= len(name) <= MAX_KEY_NAME_CHARS:
            raise InvalidAuthInput(f"Key name must have 1 to {MAX_KEY_NAME_CHARS} characters")
        key_scopes = user.scopes if scopes is None else normalize_scopes(scopes)
        if ALL_SCOPES not in user.scopes:
            wider = sorted(set(key_scopes) - set(user.scopes))
            if wider:
                raise InvalidAuthInput(f"Key scopes {wider} exceed user {username!r}'s scopes {list(user.scopes)}")
        if expires_in_days is not None and not expires_in_days > 0:
            raise InvalidAuthInput("expires_in_days must be positive")
        now = self._clock()
        expires_at = None if expires_in_days is None else now + expires_in_days * 86400.0
        key_id, full_key = generate_api_key()
        await repo.insert_api_key(
            self._db, key_id=key_id, key_hash=hash_api_key(full_key), username=username, name=name,
            scopes=key_scopes, now=now, expires_at=expires_at,
        )
        key = ApiKey(key_id=key_id, username=username, tenant=user.tenant, name=name, scopes=key_scopes,
                     created_at=now, expires_at=expires_at, revoked_at=None)
        return NewApiKey(key=key, secret=full_key)

    async def list_api_keys(self, username: str | None = None) -> list[ApiKey]:
        return await repo.list_api_keys(self._db, username)

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent); returns its metadata.

        Raises:
            ApiKeyNotFound: no key with this id.
        """
        await repo.mark_key_revoked(self._db, key_id, self._clock())
        key = await repo.get_api_key(self._db, key_id)
        if key is None:
            raise ApiKeyNotFound(f"No API key {key_id!r}")
        return key

    async def authenticate_api_key(self, key: str) -> Principal:
        """The principal of a usable key (`InvalidApiKey` otherwise), checked in the database each call.

        Its scopes are the key's, within its owner's current ones.
        """
        if not isinstance(key, str) or parse_key_id(key) is None:
            raise InvalidApiKey("Malformed API key")
        found = await repo.find_usable_key_by_hash(self._db, hash_api_key(key), self._clock())
        if found is None:
            raise InvalidApiKey("Unknown, revoked or expired API key")
        api_key, owner_scopes = found
        return Principal(subject=api_key.username, tenant=api_key.tenant,
                         scopes=effective_scopes(api_key.scopes, owner_scopes), method="api_key",
                         key_id=api_key.key_id)


def require_scope(principal: Principal, service: str) -> None:
    """Raise `InsufficientScope` unless `principal` may use `service`."""
    if not principal.allows(service):
        raise InsufficientScope(
            f"{'API key' if principal.method == 'api_key' else 'Token'} of {principal.subject!r} "
            f"has no scope for service {service!r}"
        )
