"""Auth: users, logins, tokens and API keys on both storage backends."""

from __future__ import annotations

import jwt
import pytest

import business_modules.auth.repository  # noqa: F401  (registers the auth migrations)
from business_modules.auth import (
    ApiKeyNotFound,
    AuthService,
    InsufficientScope,
    InvalidApiKey,
    InvalidAuthInput,
    InvalidCredentials,
    InvalidToken,
    TokenExpired,
    UnknownUser,
    UserExists,
    require_scope,
)
from business_modules.auth.api_keys import hash_api_key
from business_modules.storage import Database

SECRET = "test-secret-key-with-enough-characters-0123456789"


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(database: Database, clock: Clock) -> AuthService:
    return AuthService(database, secret_key=SECRET, token_ttl_s=1800, clock=clock)


async def test_login_issues_a_token_that_names_user_tenant_and_scopes(auth: AuthService) -> None:
    user = await auth.create_user(username="alice", password="correct horse", scopes="redundancy, export",
                                  tenant="acme")
    assert (user.tenant, user.scopes, user.is_active) == ("acme", ("export", "redundancy"), True)
    token = await auth.login(username="alice", password="correct horse")
    assert token.token_type == "bearer" and token.expires_in == 1800
    principal = auth.verify_token(token.access_token)
    assert (principal.subject, principal.tenant, principal.method) == ("alice", "acme", "jwt")
    assert principal.allows("redundancy") and not principal.allows("bul")
    require_scope(principal, "export")
    with pytest.raises(InsufficientScope):
        require_scope(principal, "bul")


async def test_passwords_are_stored_as_argon2_hashes(auth: AuthService, database: Database) -> None:
    await auth.create_user(username="bob", password="s3cret-pass", scopes=["*"])
    stored = await database.fetch_value("SELECT password_hash FROM auth_users WHERE username = :u", {"u": "bob"})
    assert stored.startswith("$argon2id$") and "s3cret-pass" not in stored


@pytest.mark.parametrize(("username", "password"), [("alice", "wrong password"), ("nobody", "correct horse"),
                                                    ("alice\x00", "correct horse")])  # a NUL: was a database error
async def test_bad_credentials_get_one_error(auth: AuthService, username: str, password: str) -> None:
    await auth.create_user(username="alice", password="correct horse", scopes="*")
    with pytest.raises(InvalidCredentials, match="Incorrect username or password"):
        await auth.login(username=username, password=password)


async def test_disabled_user_cannot_log_in_or_use_keys(auth: AuthService) -> None:
    await auth.create_user(username="carol", password="correct horse", scopes="*")
    new = await auth.create_api_key(username="carol", name="ci")
    await auth.set_user_active("carol", False)
    with pytest.raises(InvalidCredentials):
        await auth.login(username="carol", password="correct horse")
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_api_key(new.secret)
    with pytest.raises(UnknownUser):
        await auth.set_user_active("nobody", False)


async def test_duplicate_and_malformed_users_are_refused(auth: AuthService) -> None:
    await auth.create_user(username="dave", password="correct horse", scopes="*")
    with pytest.raises(UserExists):
        await auth.create_user(username="dave", password="another pass", scopes="*")
    for kwargs in (
        {"username": "bad name!", "password": "correct horse", "scopes": "*"},
        {"username": "erin", "password": "short", "scopes": "*"},
        {"username": "erin", "password": "correct horse", "scopes": []},
        {"username": "erin", "password": "correct horse", "scopes": ["Bad Scope"]},
        {"username": "erin", "password": "correct horse", "scopes": "*", "tenant": "a/b"},
    ):
        with pytest.raises(InvalidAuthInput):
            await auth.create_user(**kwargs)
    assert [u.username for u in await auth.list_users()] == ["dave"]


async def test_token_expiry_and_forgery(auth: AuthService, clock: Clock) -> None:
    await auth.create_user(username="frank", password="correct horse", scopes="*")
    token = (await auth.login(username="frank", password="correct horse")).access_token
    clock.now += 1799
    assert auth.verify_token(token).subject == "frank"
    clock.now += 60
    with pytest.raises(TokenExpired):
        auth.verify_token(token)
    claims = {"sub": "frank", "tenant": "frank", "scopes": ["*"], "iat": int(clock.now), "exp": int(clock.now) + 60,
              "iss": "blatam", "aud": "blatam-api"}
    for forged in (
        jwt.encode(claims, "another-secret-that-is-long-enough-000000", algorithm="HS256"),
        jwt.encode(claims, None, algorithm="none"),
        jwt.encode({**claims, "aud": "someone-else"}, SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, algorithm="HS256"),
        "not.a.jwt",
    ):
        with pytest.raises(InvalidToken):
            auth.verify_token(forged)


async def test_api_keys_are_hashed_scoped_listed_and_revocable(auth: AuthService, database: Database,
                                                               clock: Clock) -> None:
    await auth.create_user(username="grace", password="correct horse", scopes="redundancy export", tenant="acme")
    new = await auth.create_api_key(username="grace", name="ci", scopes=["redundancy"])
    assert new.secret.startswith(f"blt_{new.key.key_id}_")
    stored = await database.fetch_one("SELECT * FROM auth_api_keys WHERE key_id = :k", {"k": new.key.key_id})
    assert stored["key_hash"] == hash_api_key(new.secret)
    assert new.secret not in str(stored)

    principal = await auth.authenticate_api_key(new.secret)
    assert (principal.subject, principal.tenant, principal.key_id) == ("grace", "acme", new.key.key_id)
    assert principal.allows("redundancy") and not principal.allows("export")

    listed = await auth.list_api_keys("grace")
    assert [(k.key_id, k.name, k.scopes, k.state(clock.now)) for k in listed] == [
        (new.key.key_id, "ci", ("redundancy",), "active")]

    revoked = await auth.revoke_api_key(new.key.key_id)
    assert revoked.state(clock.now) == "revoked"
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_api_key(new.secret)
    with pytest.raises(ApiKeyNotFound):
        await auth.revoke_api_key("0123456789ab")


async def test_key_scopes_cannot_exceed_the_users(auth: AuthService) -> None:
    await auth.create_user(username="heidi", password="correct horse", scopes="redundancy")
    with pytest.raises(InvalidAuthInput, match="exceed"):
        await auth.create_api_key(username="heidi", name="too wide", scopes="*")
    with pytest.raises(UnknownUser):
        await auth.create_api_key(username="nobody", name="x")
    with pytest.raises(InvalidAuthInput):
        await auth.create_api_key(username="heidi", name="   ")


async def test_expired_key_and_revocation_by_another_replica(auth: AuthService, database: Database,
                                                             clock: Clock) -> None:
    await auth.create_user(username="ivan", password="correct horse", scopes="*")
    short = await auth.create_api_key(username="ivan", name="short", expires_in_days=1)
    long = await auth.create_api_key(username="ivan", name="long")
    await auth.authenticate_api_key(short.secret)
    clock.now += 86401
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_api_key(short.secret)

    await auth.authenticate_api_key(long.secret)  # checked once by this "replica"
    other_replica = AuthService(database, secret_key=SECRET, token_ttl_s=1800, clock=clock)
    await other_replica.revoke_api_key(long.key.key_id)
    with pytest.raises(InvalidApiKey):  # the very next check, no clock moved
        await auth.authenticate_api_key(long.secret)


@pytest.mark.parametrize("key", ["", "blt_short", "Bearer x", "blt_0123456789ab_" + "x" * 43])
async def test_malformed_or_unknown_keys_are_refused(auth: AuthService, key: str) -> None:
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_api_key(key)


async def test_disabling_a_user_stops_its_token_and_keys_on_the_next_check(auth: AuthService,
                                                                          database: Database,
                                                                          clock: Clock) -> None:
    await auth.create_user(username="judy", password="correct horse", scopes="*", tenant="acme")
    token = (await auth.login(username="judy", password="correct horse")).access_token
    key = (await auth.create_api_key(username="judy", name="ci")).secret
    assert (await auth.authenticate_token(token)).subject == "judy"
    assert (await auth.authenticate_api_key(key)).subject == "judy"

    other_replica = AuthService(database, secret_key=SECRET, token_ttl_s=1800, clock=clock)
    await other_replica.set_user_active("judy", False)
    with pytest.raises(InvalidToken, match="disabled or was removed"):
        await auth.authenticate_token(token)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate_api_key(key)
    assert auth.verify_token(token).subject == "judy"  # the signature alone still checks out

    await other_replica.set_user_active("judy", True)
    assert (await auth.authenticate_token(token)).tenant == "acme"
    await database.execute("DELETE FROM auth_users WHERE username = :u", {"u": "judy"})
    with pytest.raises(InvalidToken, match="disabled or was removed"):
        await auth.authenticate_token(token)


async def test_tokens_and_keys_follow_the_users_current_scopes_and_tenant(auth: AuthService,
                                                                          database: Database) -> None:
    await auth.create_user(username="kim", password="correct horse", scopes="redundancy export", tenant="acme")
    token = (await auth.login(username="kim", password="correct horse")).access_token
    key = (await auth.create_api_key(username="kim", name="ci", scopes="redundancy export")).secret

    await database.execute("UPDATE auth_users SET scopes = 'export' WHERE username = 'kim'")
    for principal in (await auth.authenticate_token(token), await auth.authenticate_api_key(key)):
        assert principal.scopes == frozenset({"export"})
        with pytest.raises(InsufficientScope):
            require_scope(principal, "redundancy")

    await database.execute("UPDATE auth_users SET scopes = '*' WHERE username = 'kim'")
    assert (await auth.authenticate_token(token)).scopes == frozenset({"redundancy", "export"})  # never wider

    await database.execute("UPDATE auth_users SET tenant = 'globex' WHERE username = 'kim'")
    with pytest.raises(InvalidToken, match="another tenant"):
        await auth.authenticate_token(token)
    assert (await auth.authenticate_api_key(key)).tenant == "globex"  # a key acts for its user as they are now


def _segments(*parts: object) -> str:
    import base64
    import json

    return ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode() for p in parts)


@pytest.mark.parametrize("token", [
    "",
    "not-a-token",
    "a.b",
    "a.b.c",
    "é.é.é",
    _segments({"alg": "HS256"}, [1]) + ".sig",
    _segments({"alg": "HS256", "typ": "JWT"}, {"sub": "x"}) + ".AAAA",
    jwt.encode({"sub": "x", "iat": 1, "exp": 2, "iss": "blatam", "aud": "blatam-api"}, "wrong-key-" + "x" * 32,
               algorithm="HS256"),
    jwt.encode({"sub": "x", "iat": 1, "exp": 2, "iss": "blatam", "aud": "blatam-api"}, SECRET * 2, algorithm="HS512"),
    jwt.encode({"sub": "x", "iat": 1, "exp": 2, "iss": "blatam"}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "x", "iat": 1, "iss": "blatam", "aud": "blatam-api"}, SECRET, algorithm="HS256"),
    jwt.encode({"sub": "x", "iat": 1, "exp": "soon", "iss": "blatam", "aud": "blatam-api"}, SECRET,
               algorithm="HS256"),
])
async def test_token_errors_are_ours_never_pyjwts(auth: AuthService, token: str) -> None:
    with pytest.raises(InvalidToken) as raised:
        await auth.authenticate_token(token)
    message = str(raised.value)
    assert message.startswith("Access token"), message
    for library_text in ("segments", "padding", "Signature verification failed", "Invalid header string",
                         "Invalid payload", "not supported", "Token is missing", "Invalid audience"):
        assert library_text not in message, message


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "1e400", "true"])
def test_non_finite_expiry_is_refused(exp: str) -> None:
    """NaN and 1e400 pass PyJWT's JSON parsing: as floats they never expire, or overflow (a 500)."""
    import base64
    import hashlib
    import hmac

    from business_modules.auth.tokens import verify_access_token

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64(f'{{"sub":"x","tenant":"x","scopes":[],"iat":1,"exp":{exp},"iss":"blatam","aud":"blatam-api"}}'
                  .encode())
    signature = b64(hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="finite numbers"):
        verify_access_token(f"{header}.{payload}.{signature}", secret=SECRET, issuer="blatam",
                            audience="blatam-api", now=2.0)
