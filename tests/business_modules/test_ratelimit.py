"""Rate limiter: moving window per key, shared through real Redis, memory fallback."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
import redis.asyncio

from business_modules.ratelimit import RateLimiter, parse_limit
from tests.conftest import TEST_REDIS_URL


@pytest.fixture
async def prefix() -> str:
    """A Redis key prefix of this test only; its keys are deleted afterwards."""
    name = f"test-rl-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


async def test_memory_limit_counts_down_then_refuses_with_retry_after() -> None:
    limiter = RateLimiter(redis_url=None)
    decisions = [await limiter.hit("tenant-a:redundancy", "3/minute") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].limit == 3 and 1 <= decisions[-1].retry_after_s <= 60
    assert decisions[0].retry_after_s == 0 and limiter.backend == "memory"
    assert (await limiter.hit("tenant-b:redundancy", "3/minute")).allowed  # other tenant, own window
    assert (await limiter.hit("tenant-a:export", "3/minute")).allowed  # other route, own window
    assert await limiter.check_redis() is None


async def test_redis_limit_holds_across_replicas(prefix: str) -> None:
    replicas = [RateLimiter(redis_url=TEST_REDIS_URL, key_prefix=prefix, timeout_s=2.0) for _ in range(2)]
    try:
        allowed = [(await replicas[i % 2].hit("acme:redundancy", "5/minute")).allowed for i in range(8)]
        assert allowed == [True] * 5 + [False] * 3
        assert all(r.backend == "redis" for r in replicas)
        assert await replicas[0].check_redis() is True
    finally:
        for limiter in replicas:
            await limiter.close()


async def test_unreachable_redis_falls_back_to_memory_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(redis_url=closed_port_url(), timeout_s=0.2, retry_after_s=0.0)
    with caplog.at_level(logging.WARNING, logger="business_modules.ratelimit.limiter"):
        decisions = [await limiter.hit("acme:redundancy", "2/minute") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert {d.backend for d in decisions} == {"memory-fallback"}
    assert sum("counting per process" in r.getMessage() for r in caplog.records) == 1
    assert await limiter.check_redis() is False
    await limiter.close()


def test_nonsense_limits_are_refused() -> None:
    assert parse_limit("10 per second").amount == 10
    with pytest.raises(ValueError):
        parse_limit("lots")
