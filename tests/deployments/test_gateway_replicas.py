"""Rate limits hold across two gateway replicas (issue 16, part 4): the count lives in Redis, not in a process.

The proof that both replicas answered comes from Serve's access logs: each
replica writes its own file, and each access line carries the request id the
gateway returned in ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, ray_logs_dir, run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

pytestmark = [pytest.mark.ray, pytest.mark.security]

SECRET = "gateway-replicas-test-secret-0123456789-abcdef"
LIMIT = 4


@pytest.fixture(scope="module")
def two_gateways(serve_instance: ServeInstance) -> Iterator[tuple[str, dict[str, str]]]:
    from ray import serve

    from deployments.gateway.deployment import Gateway
    from tests.deployments.echo_service import echo_app

    schema = unique_schema("gwrep")
    prefix = f"test-gwrep-{uuid.uuid4().hex[:8]}"
    settings = {
        "blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL, "database_schema": schema,
        "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix, "rate_limit_default": "1000/minute",
        "rate_limits": {"limited": f"{LIMIT}/minute"}, "gateway_services": {"limited": "replicas_echo"},
    }
    run_app(echo_app, name="replicas_echo", route_prefix="/replicas-echo")
    run_app(Gateway.options(num_replicas=2).bind(settings), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                     users={"ann": ("acme", "limited"), "ben": ("globex", "limited")}))
    try:
        yield serve_instance.base_url, keys
    finally:
        for app in ("gateway", "replicas_echo"):
            serve.delete(app)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def _replicas_that_answered(request_ids: list[str]) -> int:
    """How many gateway replica log files name one of ``request_ids`` (access lines carry the request id)."""
    logs = ray_logs_dir() / "serve"
    answered = 0
    for path in logs.glob("replica_gateway_Gateway_*.log"):
        text = path.read_text(errors="replace")
        answered += any(request_id in text for request_id in request_ids)
    return answered


def test_a_tenants_limit_holds_across_two_gateway_replicas(two_gateways) -> None:
    base_url, keys = two_gateways
    with httpx.Client(base_url=base_url, timeout=30.0) as http:
        responses = [http.post("/api/v1/limited/echo", json={}, headers={"X-API-Key": keys["ann"]}) for _ in range(16)]
        codes = [r.status_code for r in responses]
        assert codes.count(200) == LIMIT and codes.count(429) == 16 - LIMIT, codes
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"]["code"]
        # Another tenant's budget is its own.
        assert http.post("/api/v1/limited/echo", json={}, headers={"X-API-Key": keys["ben"]}).status_code == 200
    request_ids = [r.headers["x-request-id"] for r in responses]
    deadline = time.monotonic() + 10
    while _replicas_that_answered(request_ids) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)  # the replicas' log lines are written as they answer; allow the file system a moment
    assert _replicas_that_answered(request_ids) >= 2  # both replicas counted against the one Redis budget
