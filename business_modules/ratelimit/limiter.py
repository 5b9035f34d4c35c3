"""Moving-window rate limits shared through Redis, with a per-process fallback.

With ``redis_url`` the counters live in Redis (`limits` RedisStorage, moving
window), so a limit holds across every gateway replica. Without it, or while
Redis fails, counters are kept in this process's memory: the service keeps
answering, but each replica counts on its own (said once in the logs, and
`backend` reports it). Every Redis call is bounded by ``timeout_s``; after a
failure Redis is skipped for ``retry_after_s`` so a dead Redis costs one
timeout per interval, not one per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import limits
import redis.exceptions
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

logger = logging.getLogger(__name__)

_REDIS_FAILURES = (TimeoutError, OSError, redis.exceptions.RedisError, limits.errors.StorageError)


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The outcome of one hit: allowed or not, and what to tell the client."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    """Epoch seconds when the oldest counted hit leaves the window."""
    retry_after_s: int
    """Whole seconds to wait before retrying (0 when allowed)."""
    backend: str


@functools.lru_cache(maxsize=256)
def parse_limit(limit: str) -> limits.RateLimitItem:
    """``"100/minute"`` -> a `limits` item (`ValueError` for nonsense)."""
    return limits.parse(limit)


class RateLimiter:
    """Counts hits per key against a limit such as ``"100/minute"``."""

    def __init__(
        self,
        *,
        redis_url: str | None,
        timeout_s: float = 0.25,
        retry_after_s: float = 5.0,
        key_prefix: str = "blatam-rl",
        clock: Callable[[], float] = time.monotonic,
    ):
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._redis_storage: RedisStorage | None = None
        self._redis: MovingWindowRateLimiter | None = None
        self._redis_down_until = 0.0
        self._redis_failing = False
        if redis_url:
            self._redis_storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=key_prefix,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
            self._redis = MovingWindowRateLimiter(self._redis_storage)
        else:
            logger.warning("REDIS_URL not set: rate limits are counted per process (each replica separately)")

    @property
    def backend(self) -> str:
        """``redis``, ``memory`` (no Redis configured) or ``memory-fallback`` (Redis failing)."""
        if self._redis is None:
            return "memory"
        return "memory-fallback" if self._redis_failing else "redis"

    async def hit(self, key: str, limit: str) -> RateLimitDecision:
        """Count one hit of `key` and say whether it is within `limit`."""
        return await self._apply(parse_limit(limit), key, count=True)

    async def peek(self, key: str, limit: str) -> RateLimitDecision:
        """Whether one more hit of `key` would be within `limit`, without counting one.

        For budgets only some outcomes spend (failed logins): `peek` before the
        attempt, `hit` after a failure.
        """
        return await self._apply(parse_limit(limit), key, count=False)

    async def _apply(self, item: limits.RateLimitItem, key: str, *, count: bool) -> RateLimitDecision:
        if self._redis is not None and self._clock() >= self._redis_down_until:
            try:
                async with asyncio.timeout(self._timeout_s):
                    allowed, stats = await self._count_or_read(self._redis, item, key, count=count)
            except _REDIS_FAILURES as exc:
                self._on_redis_failure(exc)
            else:
                if self._redis_failing:
                    logger.warning("Redis is back: rate limits are shared across replicas again")
                    self._redis_failing = False
                return self._decision(item, allowed, stats, "redis")
        allowed, stats = await self._count_or_read(self._memory, item, key, count=count)
        return self._decision(item, allowed, stats, self.backend)

    @staticmethod
    async def _count_or_read(strategy: MovingWindowRateLimiter, item: limits.RateLimitItem, key: str, *,
                             count: bool) -> tuple[bool, WindowStats]:
        if count:
            allowed = await strategy.hit(item, key)
            return allowed, await strategy.get_window_stats(item, key)
        stats = await strategy.get_window_stats(item, key)
        return stats.remaining > 0, stats

    def _on_redis_failure(self, exc: BaseException) -> None:
        self._redis_down_until = self._clock() + self._retry_after_s
        if not self._redis_failing:
            logger.warning(
                "Redis rate-limit storage failed (%s: %s): counting per process for now, retrying every %g s",
                type(exc).__name__, exc, self._retry_after_s,
            )
        self._redis_failing = True

    @staticmethod
    def _decision(item: limits.RateLimitItem, allowed: bool, stats: WindowStats, backend: str) -> RateLimitDecision:
        retry = 0 if allowed else max(1, math.ceil(stats.reset_time - time.time()))
        return RateLimitDecision(
            allowed=allowed, limit=item.amount, remaining=max(0, stats.remaining), reset_at=stats.reset_time,
            retry_after_s=retry, backend=backend,
        )

    async def check_redis(self, timeout_s: float | None = None) -> bool | None:
        """Redis reachable? None when no Redis is configured."""
        if self._redis_storage is None:
            return None
        try:
            async with asyncio.timeout(timeout_s or self._timeout_s):
                return bool(await self._redis_storage.check())
        except _REDIS_FAILURES:
            return False

    async def close(self) -> None:
        """Close the Redis connection pool (best effort, bounded)."""
        if self._redis_storage is None:
            return
        client = getattr(self._redis_storage.bridge, "storage", None)
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await client.aclose()
        except _REDIS_FAILURES:
            pass
