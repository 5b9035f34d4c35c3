"""The Redis tier (redis-py asyncio): shared by every node, bounded, never fatal.

Each call is wrapped in ``asyncio.wait_for(timeout_s)`` (default 50 ms) on top
of the socket timeouts. A timeout or an error counts, answers "miss" and puts
the tier in back-off for ``backoff_s``, so a dead Redis costs one timeout per
back-off period, not one per request. Blobs are written with a TTL and
``NX`` (an existing copy is identical: keys are content hashes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache_actors.tiers.base import TierCounters

logger = logging.getLogger(__name__)

#: Upper bound for one Redis operation (the issue's ≤ 50 ms).
DEFAULT_TIMEOUT_S = 0.05


class RedisTier:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ttl_s: int = 3600,
        backoff_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or ttl_s <= 0:
            raise ValueError(f"timeout_s and ttl_s must be positive, got {timeout_s} and {ttl_s}")
        self.url = url
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.backoff_s = backoff_s
        self.clock = clock
        self.counters = TierCounters()
        self._down_until = 0.0
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    def key(self, block_hash: bytes) -> str:
        return f"{self.key_prefix}:{block_hash.hex()}"

    def _available(self) -> bool:
        if self.clock() < self._down_until:
            self.counters.skipped += 1
            return False
        return True

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            self.counters.timeouts += 1
        else:
            self.counters.errors += 1
        self._down_until = self.clock() + self.backoff_s
        logger.warning("redis tier %s failed (%s); backing off %.1f s", self.url, type(exc).__name__, self.backoff_s)

    async def get_many(self, hashes: Sequence[bytes]) -> list[bytes | None]:
        if not hashes or not self._available():
            return [None] * len(hashes)
        try:
            values = await asyncio.wait_for(self._client.mget([self.key(h) for h in hashes]), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._failed(exc)
            return [None] * len(hashes)
        found = sum(v is not None for v in values)
        self.counters.hits += found
        self.counters.misses += len(values) - found
        return list(values)

    async def put(self, block_hash: bytes, blob: bytes) -> bool:
        if not self._available():
            return False
        try:
            await asyncio.wait_for(self._client.set(self.key(block_hash), blob, ex=self.ttl_s, nx=True), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._failed(exc)
            return False
        self.counters.writes += 1
        return True

    async def probe(self) -> tuple[bool, str]:
        """(reachable, detail) by a PING bounded by the tier's timeout (for `blatam status`; no back-off)."""
        try:
            await asyncio.wait_for(self._client.ping(), self.timeout_s * 10)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            return False, f"{self.url}: {type(exc).__name__}"
        return True, self.url

    async def warm_up(self, timeout_s: float = 1.0) -> bool:
        """Open the first connection with a looser bound than an operation's (called once at start)."""
        try:
            await asyncio.wait_for(self._client.ping(), timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            logger.warning("redis tier %s not reachable at start (%s)", self.url, type(exc).__name__)
            return False
        return True

    async def read_raw(self, key: str) -> tuple[bool, bytes | None]:
        """One value by full key (coordinator snapshots): ``(answered, value)``.

        ``answered`` is False when Redis failed, timed out or is backing off,
        so a caller can tell "no such key" (True, None) from "Redis did not say".
        """
        if not self._available():
            return False, None
        try:
            return True, await asyncio.wait_for(self._client.get(key), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._failed(exc)
            return False, None

    async def set_raw(self, key: str, value: bytes) -> bool:
        """Write one value by full key (coordinator snapshots), bounded by the tier's timeout."""
        if not self._available():
            return False
        try:
            await asyncio.wait_for(self._client.set(key, value, ex=self.ttl_s), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
            self._failed(exc)
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()
