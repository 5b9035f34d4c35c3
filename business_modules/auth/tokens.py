"""JWT access tokens (PyJWT, HS256): issue and verify.

Claims: ``sub`` (username), ``tenant``, ``scopes`` (list), ``iat``, ``exp``,
``iss`` and ``aud``. Verification requires ``exp``, ``iat`` and ``sub`` and
accepts only HS256, so an ``alg: none`` or RS/HS confusion token is refused.

A token only proves who logged in and what they were granted then; whether
that user may still act (exists, enabled, current scopes) is checked against
the database on every request by `AuthService.authenticate_token`.

PyJWT's exception texts ("Not enough segments", "Invalid crypto padding") are
never shown to callers: `token_error` turns each into our own message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import jwt

from business_modules.auth.errors import InvalidToken, TokenExpired
from business_modules.auth.models import AccessToken, Principal

ALGORITHM = "HS256"
LEEWAY_S = 5

# Most specific first: InvalidSignatureError is a DecodeError.
_MESSAGES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "Access token signature does not match; log in again"),
    (jwt.DecodeError, "Access token is malformed: expected a JWT from POST /api/v1/auth/login"),
    (jwt.InvalidAlgorithmError, "Access token is not signed with HS256"),
    (jwt.InvalidAudienceError, "Access token was issued for another audience"),
    (jwt.InvalidIssuerError, "Access token was issued by another issuer"),
    (jwt.MissingRequiredClaimError, "Access token lacks a required claim (sub, iat, exp)"),
)
_DEFAULT_MESSAGE = "Access token is invalid; log in again"


def token_error(exc: jwt.PyJWTError) -> InvalidToken:
    """Our `InvalidToken` for a PyJWT failure, with our message (never the library's text)."""
    for exc_type, message in _MESSAGES:
        if isinstance(exc, exc_type):
            return InvalidToken(message)
    return InvalidToken(_DEFAULT_MESSAGE)


def issue_access_token(
    *,
    subject: str,
    tenant: str,
    scopes: Iterable[str],
    secret: str,
    ttl_s: int,
    issuer: str,
    audience: str,
    now: float,
) -> AccessToken:
    """Sign a token for `subject` valid `ttl_s` seconds from `now`."""
    issued = int(now)
    claims = {
        "sub": subject,
        "tenant": tenant,
        "scopes": sorted(scopes),
        "iat": issued,
        "exp": issued + ttl_s,
        "iss": issuer,
        "aud": audience,
    }
    return AccessToken(access_token=jwt.encode(claims, secret, algorithm=ALGORITHM), expires_in=ttl_s)


def verify_access_token(token: str, *, secret: str, issuer: str, audience: str, now: float) -> Principal:
    """The principal a valid token names.

    Raises:
        TokenExpired: past ``exp`` (beyond a few seconds of leeway).
        InvalidToken: anything else wrong (signature, algorithm, claims).
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["exp", "iat", "sub"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise token_error(exc) from exc
    # NOTE: exp and iat are checked here against the injected clock, not PyJWT's time.time().
    expires, issued = _number(claims["exp"]), _number(claims["iat"])
    if expires is None or issued is None:
        raise InvalidToken("Access token is invalid: exp and iat must be finite numbers")
    if expires + LEEWAY_S <= now:
        raise TokenExpired("Access token expired; log in again")
    if issued - LEEWAY_S > now:
        raise InvalidToken("Access token is invalid: issued in the future")
    scopes = claims.get("scopes", [])
    tenant = claims.get("tenant")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes) or not isinstance(tenant, str):
        raise InvalidToken("Access token is invalid: bad scopes or tenant claim")
    return Principal(subject=str(claims["sub"]), tenant=tenant, scopes=frozenset(scopes), method="jwt")


def _number(value: object) -> float | None:
    """`value` as a finite float, or None (a bool, a string, NaN or an overflow is not a time)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
