"""The gateway through real HTTP on a local Serve instance, real PostgreSQL and Redis.

A small echo service (tests/deployments/echo_service.py) stands in for the
business services: the gateway routes the services ``echo``, ``limited`` and
``redundancy`` to it (GATEWAY_SERVICES), so the original generic route's
``content_redundancy`` target reaches it too.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser

import httpx
import pytest

from business_modules.auth import AuthService
from business_modules.auth import repository as _auth_repository  # noqa: F401
from business_modules.auth.tokens import issue_access_token
from business_modules.storage import open_database
from deployments.app_builder import build_gateway
from deployments.common.request_id import sane_request_id
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, run_app
from tests.deployments.test_gateway_openapi import unresolved_refs
from tests.storage_fixtures import drop_redis_keys, drop_schema, unique_schema

pytestmark = pytest.mark.ray

SECRET = "gateway-test-secret-0123456789-abcdefghijklmnop"
PASSWORD = "correct horse battery"


class Env:
    """What the tests need: the URL, credentials, and a way to change users."""

    def __init__(self, base_url: str, schema: str):
        self.base_url = base_url
        self.schema = schema
        self.keys: dict[str, str] = {}

    async def auth(self) -> tuple[AuthService, object]:
        db = await open_database(TEST_DATABASE_URL, schema=self.schema)
        return AuthService(db, secret_key=SECRET, token_ttl_s=1800), db

    def admin(self, action: Callable[[AuthService], Awaitable]) -> object:
        """Run `action` on the gateway's database from this process, as the CLI or another replica would."""

        async def run() -> object:
            auth, db = await self.auth()
            try:
                return await action(auth)
            finally:
                await db.close()

        return asyncio.run(run())


async def _seed(env: Env) -> None:
    auth, db = await env.auth()
    try:
        await auth.create_user(username="alice", password=PASSWORD, scopes="echo redundancy limited bul",
                               tenant="acme")
        await auth.create_user(username="bob", password=PASSWORD, scopes="*", tenant="globex")
        env.keys["alice"] = (await auth.create_api_key(username="alice", name="all")).secret
        env.keys["alice_echo"] = (await auth.create_api_key(username="alice", name="echo", scopes="echo")).secret
        env.keys["bob"] = (await auth.create_api_key(username="bob", name="all")).secret
    finally:
        await db.close()


@pytest.fixture(scope="module")
def gateway(serve_instance: ServeInstance):
    from ray import serve

    from tests.deployments.echo_service import echo_app

    schema = unique_schema("gw")
    prefix = f"test-gw-{uuid.uuid4().hex[:8]}"
    settings = {
        "blatam_env": "test",
        "secret_key": SECRET,
        "database_url": TEST_DATABASE_URL,
        "database_schema": schema,
        "redis_url": TEST_REDIS_URL,
        "rate_limit_key_prefix": prefix,
        "rate_limit_default": "1000/minute",
        "rate_limits": {"limited": "3/minute"},
        "gateway_services": {"echo": "test_echo", "limited": "test_echo", "redundancy": "test_echo",
                             "sick": "test_sick"},
        "gateway_request_timeout_s": 1.5,
        "max_body_bytes": 64 * 1024,
        "gateway_openapi_timeout_s": 60,  # the docs tests read every echo route from /openapi.json
    }
    run_app(echo_app, name="test_echo", route_prefix="/test-echo")
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    env = Env(serve_instance.base_url, schema)
    asyncio.run(_seed(env))
    try:
        yield env
    finally:
        serve.delete("gateway")
        serve.delete("test_echo")
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


@pytest.fixture
def http(gateway: Env):
    with httpx.Client(base_url=gateway.base_url, timeout=30.0) as client:
        yield client


def assert_uniform(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


# -- health, docs ---------------------------------------------------------------


CONFIGURED = {"echo", "limited", "redundancy"}
"""The services whose Serve application the fixture deployed (all three on test_echo)."""


def health_report(http: httpx.Client, ok=lambda report: True, timeout_s: float = 30.0) -> dict:
    """``GET /health`` until `ok` accepts the report (the gateway rereads Serve's status every second)."""
    deadline = time.monotonic() + timeout_s
    while not ok(report := http.get("/health").json()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return report


def test_health_reports_the_configured_services_and_each_component(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["status"] == "healthy", report
    # what Serve was asked to deploy, not every name the gateway could route (bul, gamma, agents, export, sick)
    assert report["services_from"] == "serve" and set(report["services"]) == CONFIGURED
    assert all(report["services"][name]["status"] == "healthy" for name in CONFIGURED)
    assert report["cache"]["status"] == "disabled"  # no llm application here
    assert report["database"] == {**report["database"], "status": "healthy", "backend": "postgresql"}
    assert report["redis"]["status"] == "healthy" and report["redis"]["rate_limits"] == "redis"
    assert http.get("/ready").json() == {"status": "ready"}


def test_a_configured_service_that_is_down_degrades_health(http: httpx.Client, gateway: Env) -> None:
    from ray import serve
    from typer.testing import CliRunner

    from scripts.cli import app
    from tests.deployments.echo_service import sick_app

    run_app(sick_app, name="test_sick", route_prefix="/test-sick")  # RUNNING, but its /health answers 503
    try:
        report = health_report(http, lambda r: "sick" in r["services"])
        assert report["status"] == "degraded", report
        assert report["services"]["sick"] == {"status": "unhealthy", "app": "test_sick",
                                              "detail": "GET /health answered 503"}
        cli = CliRunner().invoke(app, ["health", "--url", gateway.base_url], env={"COLUMNS": "200"})
        assert cli.exit_code == 1, cli.output  # degraded
        assert "service sick" in cli.output and "unhealthy" in cli.output
    finally:
        serve.delete("test_sick")
    report = health_report(http, lambda r: "sick" not in r["services"])
    assert set(report["services"]) == CONFIGURED and report["status"] == "healthy", report


def test_blatam_health_reads_the_report(gateway: Env) -> None:
    import json

    from typer.testing import CliRunner

    from scripts.cli import app

    runner = CliRunner()
    table = runner.invoke(app, ["health", "--url", gateway.base_url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output  # healthy
    for component in ("service echo", "service redundancy", "cache", "disabled", "database", "redis", "postgresql",
                      "as deployed on Serve"):
        assert component in table.output, component
    assert "service bul" not in table.output and "not_deployed" not in table.output
    raw = runner.invoke(app, ["health", "--url", gateway.base_url, "--json"])
    assert raw.exit_code == 0 and json.loads(raw.output)["database"]["backend"] == "postgresql"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = runner.invoke(app, ["health", "--url", f"http://127.0.0.1:{closed}", "--timeout", "2"])
    assert down.exit_code == 2 and "unreachable" in down.output


class _Assets(HTMLParser):
    """Every URL a page loads: ``src``/``href`` attributes and ReDoc's ``spec-url``."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_gateway(http: httpx.Client, page: str) -> None:
    response = http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "://" not in html  # no CDN, no other host: works on a cluster without internet
    parser = _Assets()
    parser.feed(html)
    urls = parser.urls + re.findall(r"url: '([^']+)'", html)  # Swagger UI's document URL is in its script
    assert any(url.endswith(".js") for url in urls) and "/openapi.json" in urls, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = http.get(url)
        assert asset.status_code == 200 and asset.content, (url, asset.status_code)
    if page == "/docs":
        assert "javascript" in http.get("/docs/static/swagger-ui-bundle.js").headers["content-type"]


def test_openapi_documents_each_service_under_its_gateway_path(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    assert "/api/v1/auth/login" in paths and "/api/v1/gateway/route" in paths and "/api/v1/{service}/{path}" in paths
    schemes = sorted(spec["components"]["securitySchemes"])
    for service in CONFIGURED:  # the echo service's real route and body, once per service that routes to it
        items = paths[f"/api/v1/{service}/items"]["post"]
        body = items["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{service}.Item"}
        assert set(schemas[f"{service}.Item"]["properties"]) == {"name", "count"}
        assert items["security"] == [{name: []} for name in schemes] and items["tags"] == [service]
        assert f"/api/v1/{service}/echo" in paths
    assert "Item" not in schemas and "HTTPValidationError" in schemas  # the gateway's own model stays unprefixed
    assert not [p for p in paths if p.startswith(("/api/v1/bul/", "/api/v1/export/", "/api/v1/sick/"))]
    ids = [op["operationId"] for item in paths.values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids))
    assert unresolved_refs(spec) == []


# -- authentication ---------------------------------------------------------------


def test_login_returns_a_bearer_token_that_works(http: httpx.Client) -> None:
    response = http.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 1800
    me = http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.json() == {"subject": "alice", "tenant": "acme", "scopes": ["bul", "echo", "limited", "redundancy"],
                         "method": "jwt", "key_id": None}


def _expired_token() -> str:
    return issue_access_token(subject="alice", tenant="acme", scopes=["echo"], secret=SECRET, ttl_s=60,
                              issuer="blatam", audience="blatam-api", now=time.time() - 3600).access_token


@pytest.mark.parametrize("headers, code", [
    ({}, "not_authenticated"),
    ({"Authorization": "Bearer not-a-token"}, "invalid_token"),
    ({"Authorization": "Bearer a.b"}, "invalid_token"),
    ({"Authorization": "Bearer a.b.c"}, "invalid_token"),
    ({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}, "invalid_token"),
    ({"Authorization": f"Bearer {_expired_token()}"}, "token_expired"),
    ({"X-API-Key": "blt_000000000000_" + "A" * 43}, "invalid_api_key"),
    ({"X-API-Key": "garbage"}, "invalid_api_key"),
])
def test_missing_or_invalid_credentials_are_401(http: httpx.Client, headers: dict, code: str) -> None:
    response = http.post("/api/v1/echo/echo", json={}, headers=headers)
    error = assert_uniform(response, 401, code)
    assert response.headers["www-authenticate"] == "Bearer"
    for library_text in ("segments", "padding", "Signature verification failed", "Invalid header", "Invalid payload"):
        assert library_text not in error["message"], error  # PyJWT's wording never reaches users


def test_a_disabled_users_token_and_keys_stop_on_the_next_request(http: httpx.Client, gateway: Env) -> None:
    async def create(auth: AuthService) -> str:
        await auth.create_user(username="dora", password=PASSWORD, scopes="echo", tenant="initech")
        return (await auth.create_api_key(username="dora", name="ci")).secret

    key = gateway.admin(create)
    login = http.post("/api/v1/auth/login", json={"username": "dora", "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert http.get("/api/v1/echo/echo", headers=token).status_code == 200
    assert http.get("/api/v1/echo/echo", headers={"X-API-Key": key}).status_code == 200

    gateway.admin(lambda auth: auth.set_user_active("dora", False))
    error = assert_uniform(http.get("/api/v1/echo/echo", headers=token), 401, "invalid_token")
    assert "disabled" in error["message"]
    assert_uniform(http.get("/api/v1/auth/me", headers=token), 401, "invalid_token")
    assert_uniform(http.get("/api/v1/echo/echo", headers={"X-API-Key": key}), 401, "invalid_api_key")
    assert_uniform(http.get("/api/v1/echo/echo", headers={"Authorization": f"Bearer {key}"}), 401,
                   "invalid_api_key")
    assert_uniform(http.post("/api/v1/auth/login", json={"username": "dora", "password": PASSWORD}), 401,
                   "invalid_credentials")


def test_failed_logins_lock_one_name_from_one_address_not_other_users(http: httpx.Client, gateway: Env) -> None:
    gateway.admin(lambda auth: auth.create_user(username="erin", password=PASSWORD, scopes="echo"))
    failures = [http.post("/api/v1/auth/login", json={"username": "erin", "password": "not her password"})
                for _ in range(10)]
    assert [f.status_code for f in failures] == [401] * 10
    assert [f.json()["error"]["code"] for f in failures] == ["invalid_credentials"] * 10
    locked = http.post("/api/v1/auth/login", json={"username": "erin", "password": PASSWORD})
    error = assert_uniform(locked, 429, "rate_limited")
    assert "user name" in error["message"] and 1 <= int(locked.headers["retry-after"]) <= 60
    other = http.post("/api/v1/auth/login", json={"username": "bob", "password": PASSWORD})
    assert other.status_code == 200, other.text  # same address, another user: not locked out


def test_wrong_password_is_401(http: httpx.Client) -> None:
    response = http.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong password"})
    assert_uniform(response, 401, "invalid_credentials")


def test_key_without_the_service_scope_is_403(http: httpx.Client, gateway: Env) -> None:
    response = http.post("/api/v1/redundancy/echo", json={}, headers={"X-API-Key": gateway.keys["alice_echo"]})
    assert_uniform(response, 403, "insufficient_scope")


def test_revoked_key_stops_working(http: httpx.Client, gateway: Env) -> None:
    async def create() -> tuple[str, str]:
        auth, db = await gateway.auth()
        try:
            new = await auth.create_api_key(username="bob", name="short-lived")
            return new.key.key_id, new.secret
        finally:
            await db.close()

    async def revoke(key_id: str) -> None:
        auth, db = await gateway.auth()
        try:
            await auth.revoke_api_key(key_id)
        finally:
            await db.close()

    key_id, secret = asyncio.run(create())
    first = http.get("/api/v1/echo/echo", headers={"X-API-Key": secret})
    assert first.status_code == 200, first.text
    asyncio.run(revoke(key_id))
    assert_uniform(http.get("/api/v1/echo/echo", headers={"X-API-Key": secret}), 401, "invalid_api_key")


# -- forwarding -------------------------------------------------------------------


def test_forwarding_passes_body_query_caller_and_request_id(http: httpx.Client, gateway: Env) -> None:
    response = http.post("/api/v1/echo/echo?a=1&a=2&b=x", json={"hello": "world"},
                         headers={"X-API-Key": gateway.keys["alice"], "X-Request-ID": "test-req-0001"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "test-req-0001"
    assert int(response.headers["x-ratelimit-limit"]) == 1000
    echoed = response.json()
    assert echoed["path"] == "/echo" and echoed["method"] == "POST"
    assert echoed["query"] == [["a", "1"], ["a", "2"], ["b", "x"]]
    assert echoed["body"] == '{"hello":"world"}' and echoed["content_type"] == "application/json"
    assert echoed["caller"] == {"tenant": "acme", "subject": "alice",
                                "scopes": ["bul", "echo", "limited", "redundancy"], "request_id": "test-req-0001"}
    assert echoed["request_id"] == "test-req-0001"
    assert echoed["saw_credentials"] is False


def test_direct_calls_have_no_forged_caller(http: httpx.Client) -> None:
    echoed = http.post("/test-echo/echo", json={}, headers={"X-Blatam-Tenant": "evil"}).json()
    assert echoed["caller"] is None


def test_binary_responses_pass_through(http: httpx.Client, gateway: Env) -> None:
    response = http.get("/api/v1/echo/binary", headers={"X-API-Key": gateway.keys["alice"]})
    assert response.status_code == 200
    assert response.content == bytes(range(256))
    assert response.headers["content-type"] == "application/octet-stream"


def test_service_errors_come_back_uniform(http: httpx.Client, gateway: Env) -> None:
    key = {"X-API-Key": gateway.keys["alice"]}
    assert_uniform(http.get("/api/v1/echo/boom", headers=key), 500, "internal_error")
    error = assert_uniform(http.get("/api/v1/echo/plain-error", headers=key), 418, "i'm_a_teapot")
    assert error["message"] == "teapot refuses"
    error = assert_uniform(http.post("/api/v1/echo/items", json={"name": "", "count": -1}, headers=key),
                           422, "validation_error")
    assert "name" in error["message"] and "count" in error["message"]
    assert_uniform(http.get("/api/v1/echo/no-such-route", headers=key), 404, "not_found")


def test_unknown_undeployed_and_slow_services(http: httpx.Client, gateway: Env) -> None:
    key = {"X-API-Key": gateway.keys["bob"]}
    assert_uniform(http.get("/api/v1/nosuch/x", headers=key), 404, "unknown_service")
    response = http.get("/api/v1/bul/health", headers=key)
    assert_uniform(response, 503, "service_unavailable")
    assert_uniform(http.get("/api/v1/echo/slow?seconds=4", headers=key), 504, "service_timeout")


# -- the original generic route ----------------------------------------------------


def test_generic_route_reaches_the_target_system(http: httpx.Client, gateway: Env) -> None:
    response = http.post("/api/v1/gateway/route", headers={"X-API-Key": gateway.keys["alice"]}, json={
        "target_system": "content_redundancy", "endpoint": "/echo?x=1", "method": "post", "data": {"k": "v"}})
    assert response.status_code == 200, response.text
    out = response.json()
    assert set(out) == {"request_id", "target_system", "endpoint", "method", "status_code", "response",
                        "processing_time", "timestamp"}
    assert (out["target_system"], out["endpoint"], out["method"], out["status_code"]) == (
        "content_redundancy", "/echo?x=1", "POST", 200)
    assert out["response"]["body"] == '{"k": "v"}' and out["response"]["query"] == [["x", "1"]]
    assert out["request_id"] == response.headers["x-request-id"] and out["processing_time"] > 0


def test_generic_route_refuses_unknown_targets_and_reports_down_ones(http: httpx.Client, gateway: Env) -> None:
    key = {"X-API-Key": gateway.keys["bob"]}
    assert_uniform(http.post("/api/v1/gateway/route", headers=key,
                             json={"target_system": "nope", "endpoint": "/x"}), 400, "unknown_target_system")
    assert_uniform(http.post("/api/v1/gateway/route", headers=key,
                             json={"target_system": "export_ia", "endpoint": "/health"}), 503, "service_unavailable")
    assert_uniform(http.post("/api/v1/gateway/route", headers=key,
                             json={"target_system": "bul", "endpoint": "http://elsewhere/x"}), 400, "bad_endpoint")


# -- bad input ------------------------------------------------------------------


def test_bad_requests_get_the_uniform_body(http: httpx.Client, gateway: Env) -> None:
    assert_uniform(http.get("/no/such/route"), 404, "not_found")
    assert_uniform(http.get("/api/v1/auth/login"), 405, "method_not_allowed")
    assert_uniform(http.post("/api/v1/auth/login", json={"username": "alice"}), 422, "validation_error")
    assert_uniform(http.post("/api/v1/auth/login", content=b"{not json",
                             headers={"content-type": "application/json"}), 400, "malformed_json")
    big = b"x" * (64 * 1024 + 1)
    assert_uniform(http.post("/api/v1/echo/echo", content=big, headers={"X-API-Key": gateway.keys["alice"]}),
                   413, "payload_too_large")


@pytest.mark.parametrize("sent", ["x" * 5000, "x" * 129, "<script>alert(1)</script>", "two words"])
def test_unsafe_request_ids_are_replaced_in_the_header_too(http: httpx.Client, gateway: Env, sent: str) -> None:
    """Serve's proxy echoes the request's id itself; its callback middleware must have replaced it first."""
    headers = {"X-API-Key": gateway.keys["alice"], "X-Request-ID": sent}
    error = http.get("/no/such/route", headers=headers)
    echoed = http.post("/api/v1/echo/echo", json={}, headers=headers)
    assert error.status_code == 404 and echoed.status_code == 200, (error.text, echoed.text)
    for response, body_id in ((error, error.json()["error"]["request_id"]), (echoed, echoed.json()["request_id"])):
        ids = response.headers.get_list("x-request-id")
        assert len(ids) == 1 and ids[0] != sent and sane_request_id(ids[0]) == ids[0], ids
        assert body_id == ids[0]
    assert echoed.json()["caller"]["request_id"] == echoed.headers["x-request-id"]
    assert error.headers["x-request-id"] != echoed.headers["x-request-id"]  # fresh for each request


# -- rate limits ----------------------------------------------------------------


def test_rate_limit_per_tenant_and_service(http: httpx.Client, gateway: Env) -> None:
    alice = {"X-API-Key": gateway.keys["alice"]}
    statuses = [http.get("/api/v1/limited/echo", headers=alice) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in statuses[:3]] == ["2", "1", "0"]
    refused = statuses[-1]
    assert_uniform(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert http.get("/api/v1/echo/echo", headers=alice).status_code == 200  # another route of the tenant
    assert http.get("/api/v1/limited/echo", headers={"X-API-Key": gateway.keys["bob"]}).status_code == 200
