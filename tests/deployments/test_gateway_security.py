"""Every gateway route but health, login and docs refuses bad credentials (issue 16, part 4), on real Serve.

The routes come from the gateway's own OpenAPI document, so a route added
later is covered without editing this file. For each: no credentials, a
token signed with ``alg: none``, a valid token whose payload was changed, an
expired token, a revoked key, and a key without the service's scope.
"""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest

from business_modules.auth import AuthService
from business_modules.auth.tokens import issue_access_token
from tests.deployments.conftest import ray_logs_dir
from tests.deployments.test_gateway import PASSWORD, SECRET, Env, gateway, http  # noqa: F401 - fixtures

pytestmark = [pytest.mark.ray, pytest.mark.security]

PUBLIC = {"/health", "/ready", "/api/v1/auth/login", "/docs", "/redoc", "/openapi.json"}
"""Answered without credentials: what a load balancer, a login form and a docs reader need."""


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides) -> dict:
    now = int(time.time())
    return {"sub": "alice", "tenant": "acme", "scopes": ["*"], "iat": now, "exp": now + 600, "iss": "blatam",
            "aud": "blatam-api", **overrides}


def _routes(http: httpx.Client) -> list[tuple[str, str]]:  # noqa: F811
    """(method, concrete path) for every operation the gateway documents, path parameters filled in."""
    document = http.get("/openapi.json").json()
    routes = []
    for path, operations in document["paths"].items():
        concrete = re.sub(r"\{service\}", "echo", path)
        concrete = re.sub(r"\{[^}]+\}", "x1", concrete)
        for method in operations:
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                routes.append((method.upper(), concrete))
    return routes


def _bad_credentials(http: httpx.Client, gateway: Env) -> dict[str, dict[str, str]]:  # noqa: F811
    login = http.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}).json()["access_token"]
    header, _, signature = login.split(".")
    tampered = f"{header}.{_b64(_claims(tenant='globex'))}.{signature}"  # bob's tenant, alice's signature
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."
    expired = issue_access_token(subject="alice", tenant="acme", scopes=["*"], secret=SECRET, ttl_s=60,
                                 issuer="blatam", audience="blatam-api", now=time.time() - 3600).access_token

    async def revoked(auth: AuthService) -> str:
        key = await auth.create_api_key(username="alice", name=f"revoked-{time.monotonic_ns()}")
        await auth.revoke_api_key(key.key.key_id)
        return key.secret

    return {
        "none": {},
        "alg_none": {"Authorization": f"Bearer {unsigned}"},
        "tampered": {"Authorization": f"Bearer {tampered}"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "revoked_key": {"X-API-Key": gateway.admin(revoked)},
    }


def test_every_route_but_health_login_and_docs_refuses_bad_credentials(http: httpx.Client, gateway: Env) -> None:  # noqa: F811
    routes = _routes(http)
    protected = [(method, path) for method, path in routes if path not in PUBLIC]
    paths = {path for _, path in protected}
    assert {"/api/v1/auth/me", "/api/v1/gateway/route", "/api/v1/echo/x1", "/v1/x1"} <= paths, routes
    failures = []
    for name, headers in _bad_credentials(http, gateway).items():
        for method, path in protected:
            response = http.request(method, path, headers=headers, json={} if method in {"POST", "PUT", "PATCH"} else None)
            if response.status_code != 401 or response.json().get("error", {}).get("code") is None:
                failures.append(f"{name}: {method} {path} -> {response.status_code} {response.text[:120]}")
    assert not failures, "\n".join(failures)


def test_public_routes_answer_without_credentials(http: httpx.Client) -> None:  # noqa: F811
    for method, path in _routes(http):
        if path in PUBLIC and method == "GET":
            assert http.get(path).status_code in (200, 503), path  # /ready may say not yet


def test_a_key_without_the_service_scope_is_refused_on_every_service_route(http: httpx.Client, gateway: Env) -> None:  # noqa: F811
    key = {"X-API-Key": gateway.keys["alice_echo"]}  # scope: echo only
    checked = 0
    for method, path in _routes(http):
        if path.startswith(("/api/v1/echo/", "/v1/")):  # the LLM's OpenAI API at /v1 needs the llm scope
            checked += 1
            other = path.replace("/api/v1/echo/", "/api/v1/redundancy/", 1)
            response = http.request(method, other, headers=key, json={} if method in {"POST", "PUT", "PATCH"} else None)
            assert response.status_code == 403, (method, other, response.text)
            assert response.json()["error"]["code"] == "insufficient_scope", response.text
    assert checked >= 10  # the echo service's routes, the generic route's five methods, /v1's two


def test_passwords_keys_and_tokens_never_reach_the_logs(http: httpx.Client, gateway: Env) -> None:  # noqa: F811
    """Every file under this Ray session's logs (Serve's, every worker's) after logins, key uses and failures."""
    token = http.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}).json()["access_token"]
    wrong = "wrong-" + PASSWORD  # a failed login's password must not be logged either
    assert http.post("/api/v1/auth/login", json={"username": "alice", "password": wrong}).status_code == 401
    for headers in ({"Authorization": f"Bearer {token}"}, {"X-API-Key": gateway.keys["alice"]},
                    {"Authorization": f"Bearer {gateway.keys['bob']}"}):
        assert http.post("/api/v1/echo/echo", json={"x": 1}, headers=headers).status_code == 200
    time.sleep(2)  # log lines are flushed by the workers' log monitors
    secrets = {"password": PASSWORD, "wrong password": wrong, "token": token,
               **{f"key {name}": secret for name, secret in gateway.keys.items()}}
    found, logged_requests = [], 0
    for path in ray_logs_dir().rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            logged_requests += text.count(b"POST /api/v1/auth/login 401")
            found += [f"{what} in {path}" for what, secret in secrets.items() if secret.encode() in text]
    assert logged_requests >= 1  # the search read the logs these requests wrote (the failed login's access line)
    assert not found, found
