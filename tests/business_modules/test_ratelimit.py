"""Rate limiter: moving window per key, shared through real Redis, memory fallback."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
import redis.asyncio

from business_modules.ratelimit import LoginThrottle, RateLimiter, parse_limit
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


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_peek_reads_the_budget_without_spending_it(prefix: str, shared: bool) -> None:
    limiter = RateLimiter(redis_url=TEST_REDIS_URL if shared else None, key_prefix=prefix, timeout_s=2.0)
    try:
        for _ in range(3):
            assert (await limiter.peek("k", "2/minute")).remaining == 2
        await limiter.hit("k", "2/minute")
        await limiter.hit("k", "2/minute")
        peeked = await limiter.peek("k", "2/minute")
        assert not peeked.allowed and peeked.remaining == 0 and peeked.retry_after_s >= 1
        assert peeked.backend == ("redis" if shared else "memory")
    finally:
        await limiter.close()


async def test_login_throttle_counts_failures_per_name_and_address_across_replicas(prefix: str) -> None:
    replicas = [RateLimiter(redis_url=TEST_REDIS_URL, key_prefix=prefix, timeout_s=2.0) for _ in range(2)]
    throttles = [LoginThrottle(limiter, per_name_and_address="3/minute", per_address="5/minute")
                 for limiter in replicas]
    try:
        for attempt in range(3):  # alternate replicas: the budget is shared through Redis
            assert (await throttles[attempt % 2].check(username="alice", address="10.0.0.1")).decision.allowed
            await throttles[attempt % 2].record_failure(username="alice", address="10.0.0.1")
        locked = await throttles[1].check(username="alice", address="10.0.0.1")
        assert not locked.decision.allowed and "user name" in locked.what
        # Other names from that address, and the same name elsewhere, still have their own budget.
        assert (await throttles[0].check(username="bob", address="10.0.0.1")).decision.allowed
        assert (await throttles[0].check(username="alice", address="10.0.0.2")).decision.allowed
        # Spraying: failures over many names spend the per-address budget (5) and then every name is refused.
        for name in ("bob", "carol"):
            await throttles[0].record_failure(username=name, address="10.0.0.1")
        sprayed = await throttles[0].check(username="dave", address="10.0.0.1")
        assert not sprayed.decision.allowed and sprayed.what == "failed logins from this address"
        assert (await throttles[0].check(username="dave", address="10.0.0.2")).decision.allowed
    finally:
        for limiter in replicas:
            await limiter.close()


async def test_login_throttle_keys_of_ipv6_addresses_do_not_collide() -> None:
    throttle = LoginThrottle(RateLimiter(redis_url=None), per_name_and_address="1/minute", per_address="100/minute")
    await throttle.record_failure(username="a:u", address="::1")
    assert not (await throttle.check(username="a:u", address="::1")).decision.allowed
    assert (await throttle.check(username="u", address="::1:a")).decision.allowed
