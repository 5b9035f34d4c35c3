"""JWT access tokens (PyJWT, HS256): issue and verify.

Claims: ``sub`` (username), ``tenant``, ``scopes`` (list), ``iat``, ``exp``,
``iss`` and ``aud``. Verification requires ``exp``, ``iat`` and ``sub`` and
accepts only HS256, so an ``alg: none`` or RS/HS confusion token is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import jwt

from business_modules.auth.errors import InvalidToken, TokenExpired
from business_modules.auth.models import AccessToken, Principal

ALGORITHM = "HS256"
LEEWAY_S = 5


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
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"Invalid access token: {exc}") from exc
    # NOTE: exp and iat are checked here against the injected clock, not PyJWT's time.time().
    try:
        expires, issued = float(claims["exp"]), float(claims["iat"])
    except (TypeError, ValueError) as exc:
        raise InvalidToken("Invalid access token: exp and iat must be numbers") from exc
    if expires + LEEWAY_S <= now:
        raise TokenExpired("Access token expired; log in again")
    if issued - LEEWAY_S > now:
        raise InvalidToken("Invalid access token: issued in the future")
    scopes = claims.get("scopes", [])
    tenant = claims.get("tenant")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes) or not isinstance(tenant, str):
        raise InvalidToken("Invalid access token: bad scopes or tenant claim")
    return Principal(subject=str(claims["sub"]), tenant=tenant, scopes=frozenset(scopes), method="jwt")
