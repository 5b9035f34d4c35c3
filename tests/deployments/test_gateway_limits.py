"""What the gateway accepts reaches the service, on a real Serve instance with the real services.

The gateway's body limit is 10 MiB, while Serve's replica-to-replica gRPC
path took at most 4 MiB: bodies in between (and answers over 4 MiB) were
500s. Also: unknown fields are refused with 422 by every business service.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from deployments.common.grpc_limits import GRPC_REQUEST_MAX_BYTES, SERVE_DEFAULT_GRPC_MAX_BYTES
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

pytestmark = pytest.mark.ray

SECRET = "gateway-limits-test-secret-0123456789-abcdef"
BODY_LIMIT = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def env(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    from ray import serve

    from deployments.app_builder import build_gateway
    from deployments.export import build_export
    from deployments.redundancy import build_redundancy
    from tests.deployments.echo_service import echo_app

    schema = unique_schema("gwlim")
    prefix = f"test-gwlim-{uuid.uuid4().hex[:8]}"
    settings = {
        "blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL, "database_schema": schema,
        "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix, "rate_limit_default": "1000/minute",
        "gateway_request_timeout_s": 120, "max_body_bytes": BODY_LIMIT,
        "gateway_services": {"echo": "limits_echo"},
    }
    data = tmp_path_factory.mktemp("gwlim")
    run_app(build_redundancy({"database_url": f"sqlite:///{data / 'redundancy.db'}"}), name="redundancy",
            route_prefix="/redundancy")
    run_app(build_export({"database_url": TEST_DATABASE_URL, "database_schema": schema, "data_dir": str(data)}),
            name="export", route_prefix="/export")
    run_app(echo_app, name="limits_echo", route_prefix="/limits-echo")  # a service without our replica settings
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                     users={"ann": ("acme", "redundancy export echo")}))
    try:
        yield serve_instance.base_url, {"X-API-Key": keys["ann"]}
    finally:
        for app in ("gateway", "limits_echo", "export", "redundancy"):
            serve.delete(app)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def _words(n_chars: int, seed: int) -> str:
    """Text of about `n_chars` characters that differs between seeds (no two documents alike)."""
    words = [f"w{(seed * 7919 + i * 104729) % 100_003}" for i in range(n_chars // 7)]
    return " ".join(words)[:n_chars]


def test_a_batch_of_documents_over_4_mib(env) -> None:
    """100 documents of ~50k characters (within the documented limits) are stored, all of them."""
    url, key = env
    with httpx.Client(base_url=f"{url}/api/v1/redundancy", headers=key, timeout=300) as http:
        assert http.post("/corpora", json={"name": "big"}).status_code == 201
        documents = [{"text": _words(49_000, i), "name": f"doc-{i}"} for i in range(100)]
        body = httpx.Request("POST", "/", json={"documents": documents}).content
        assert SERVE_DEFAULT_GRPC_MAX_BYTES < len(body) < BODY_LIMIT
        added = http.post("/corpora/big/documents", json={"documents": documents})
        assert added.status_code == 201, added.text[:500]
        assert len(added.json()["documents"]) == 100
        assert http.get("/corpora/big").json()["document_count"] == 100


@pytest.mark.parametrize("size", [GRPC_REQUEST_MAX_BYTES + 1, 5_000_000, BODY_LIMIT])
def test_bodies_up_to_the_limit_reach_the_service(env, size: int) -> None:
    """Bodies past gRPC's 4 MiB, up to the limit itself, get the service's own answer (its 422 here)."""
    url, key = env
    filler = "x" * (size - len('{"content": ""}'))
    body = ('{"content": "' + filler + '"}').encode()
    assert len(body) == size
    for path in ("/api/v1/redundancy/analyze", "/api/v1/export/generate"):
        answer = httpx.post(f"{url}{path}", content=body, headers={**key, "content-type": "application/json"},
                            timeout=120)
        assert answer.status_code in (413, 422), (path, answer.status_code, answer.text[:300])
        assert answer.json()["error"]["code"] in ("validation_error", "content_too_large", "payload_too_large")
    legacy = httpx.post(f"{url}/api/v1/gateway/route", headers=key, timeout=120, json={
        "target_system": "content_redundancy", "endpoint": "/analyze", "method": "POST",
        "data": {"content": filler[: size - 200]}})
    assert legacy.status_code in (200, 413, 422), legacy.text[:300]


def test_over_the_limit_is_413_and_nothing_else(env) -> None:
    url, key = env
    body = b'{"content": "' + b"x" * BODY_LIMIT + b'"}'
    for path in ("/api/v1/redundancy/analyze", "/api/v1/export/generate", "/api/v1/gateway/route"):
        answer = httpx.post(f"{url}{path}", content=body, headers={**key, "content-type": "application/json"},
                            timeout=120)
        assert answer.status_code == 413, (path, answer.text[:300])
        assert answer.json()["error"]["code"] == "payload_too_large"


def test_answers_over_4_mib_come_back(env) -> None:
    """A large answer (an export, a file) crosses the gRPC hop back to the gateway whole."""
    url, key = env
    for size in (SERVE_DEFAULT_GRPC_MAX_BYTES + 1, 9_000_000):
        answer = httpx.get(f"{url}/api/v1/echo/bytes", params={"n": size}, headers=key, timeout=120)
        assert answer.status_code == 200, answer.text[:300]
        assert len(answer.content) == size and answer.content[:256] == bytes(range(256))


def test_a_large_body_reaches_a_service_without_our_settings(env) -> None:
    """Sent by reference past the default gRPC cap, so any routable service gets it, and echoes it back."""
    url, key = env
    text = "y" * 6_000_000
    answer = httpx.post(f"{url}/api/v1/echo/echo", content=text, headers={**key, "content-type": "text/plain"},
                        timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["body"] == text


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/export/generate", {"content": "# Hi\n\ntext", "formatt": "docx"}),
    ("/api/v1/export", {"content": "# Hi\n\ntext", "format": "docx", "qualty_level": "draft"}),
    ("/api/v1/export/generate", {"content": {"title": "T", "sections": [{"heading": "H", "contnet": "x"}]}}),
    ("/api/v1/redundancy/analyze", {"content": "Some text to analyse.", "treshold": 0.5}),
    ("/api/v1/redundancy/corpora", {"name": "typo", "descripton": "x"}),
])
def test_unknown_fields_are_refused_with_422(env, path: str, body: dict) -> None:
    url, key = env
    answer = httpx.post(f"{url}{path}", headers=key, json=body, timeout=60)
    assert answer.status_code == 422, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and error["request_id"] == answer.headers["x-request-id"]
