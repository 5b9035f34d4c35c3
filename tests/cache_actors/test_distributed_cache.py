"""The distributed cache on a real local Ray cluster: same outputs as one process, and
no failed or wrong request when a shard, the coordinator or Redis goes away, or a
block is corrupted."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

ray = pytest.importorskip("ray")

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine  # noqa: E402
from cache_actors.actors.placement import get_or_create_coordinator  # noqa: E402
from cache_actors.requests import parse_request  # noqa: E402
from cache_actors.shm_pool import SharedBlockPool  # noqa: E402
from tests.cache_actors.redis_server import PrivateRedis  # noqa: E402

pytestmark = pytest.mark.ray

SYSTEM = "You are a careful assistant. Answer briefly and cite the policy section. " * 3
BASE = {"block_size": 16, "max_tokens": 4096, "cache_strategy": "lru", "max_new_tokens": 6}


def wait_until(condition: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the condition may fail while actors restart
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval_s)


def run(engine: UltraAdaptiveKVCacheEngine, text: str) -> dict[str, Any]:
    """One request, synchronously (as the engine's worker thread runs it)."""
    parsed = parse_request({"text": text}, default_max_new_tokens=engine.config.max_new_tokens)
    return engine._generate_locked(parsed, engine.runner.encode(text))


@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():
        pytest.skip("another Ray instance is running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_runner) -> Callable[[str], list[int]]:
    """Greedy tokens of the in-process engine (equal to recompute, as the core's tests show)."""
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(**BASE), runner=tiny_runner)
    cache: dict[str, list[int]] = {}

    def tokens(text: str) -> list[int]:
        if text not in cache:
            cache[text] = run(engine, text)["token_ids"]
        return cache[text]

    return tokens


@pytest.fixture(scope="module")
def dist(ray_cluster, tiny_runner) -> UltraAdaptiveKVCacheEngine:
    return UltraAdaptiveKVCacheEngine(KVCacheConfig(**BASE, enable_distributed=True, redis_url=None), runner=tiny_runner)


def test_distributed_engine_returns_the_same_results_with_hits(dist, reference):
    texts = [SYSTEM + f"Question {i}: what is covered?" for i in range(4)]
    results = [run(dist, text) for text in texts]
    assert [r["token_ids"] for r in results] == [reference(t) for t in texts]
    assert results[0]["cached_tokens"] == 0 or results[0]["cached_tokens"] % 16 == 0
    assert all(r["cached_tokens"] >= 16 * (len(dist.runner.encode(SYSTEM)) // 16) for r in results[1:])
    stats = dist.get_stats()
    assert stats["distributed"] and stats["tier_blocks"]["device"] > 0 and stats["blocks"] > 0
    assert not stats["fallbacks"]


def test_shard_killed_while_requests_stream(dist, reference):
    shard = dist.cache._shard
    old_epoch = ray.get(shard.ping.remote())["epoch"]
    texts = [SYSTEM + f"Streamed question {i % 5}?" for i in range(14)]
    killer = threading.Timer(0.3, lambda: ray.kill(shard, no_restart=False))
    killer.start()
    results = [run(dist, text) for text in texts]
    killer.join()
    assert [r["token_ids"] for r in results] == [reference(t) for t in texts]
    new_epoch = wait_until(lambda: (e := ray.get(shard.ping.remote(), timeout=5)["epoch"]) != old_epoch and e)
    assert new_epoch
    # the restarted shard (empty) fills and serves hits again
    wait_until(lambda: run(dist, SYSTEM + "After restart?")["token_ids"] and run(dist, SYSTEM + "After restart!")["cached_tokens"] > 0)
    assert run(dist, SYSTEM + "After restart?")["token_ids"] == reference(SYSTEM + "After restart?")


def test_a_block_that_fails_its_checksum_is_never_used(dist, reference):
    text = SYSTEM + "Corruption check, please."
    assert run(dist, text)["token_ids"] == reference(text)
    hashes = dist.block_hashes(dist.runner.encode(text))
    shard = dist.cache._shard
    reply = ray.get(shard.match.remote(hashes[:3], False))
    assert len(reply.slots) == 3
    pool = SharedBlockPool.attach(reply.handle)
    pool.parts["kv"][reply.slots[1]].add_(1.0)  # flip the bytes of block 1 behind the cache's back
    ray.get(shard.release.remote(reply.lease))
    mismatches = dist.cache.checksum_mismatches
    result = run(dist, text)
    assert result["token_ids"] == reference(text)
    assert result["cached_tokens"] == 16  # only block 0 was usable
    assert dist.cache.checksum_mismatches == mismatches + 1
    again = run(dist, text)  # the bad block was dropped and stored afresh
    assert again["token_ids"] == reference(text) and again["cached_tokens"] > 16


def test_coordinator_killed_no_request_fails_and_its_index_is_rebuilt(dist, reference):
    spec = dist.cache.spec
    coordinator = get_or_create_coordinator(spec)
    shard_blocks = wait_until(lambda: ray.get(dist.cache._shard.stats.remote())["blocks"])
    wait_until(lambda: ray.get(coordinator.stats.remote())["blocks"] >= shard_blocks)
    ray.kill(coordinator)  # for good: the next user re-creates it
    texts = [SYSTEM + f"During the outage {i}." for i in range(4)]
    assert [run(dist, t)["token_ids"] for t in texts] == [reference(t) for t in texts]
    shard_blocks = ray.get(dist.cache._shard.stats.remote())["blocks"]
    fresh = get_or_create_coordinator(spec)
    wait_until(lambda: ray.get(fresh.stats.remote(), timeout=5)["blocks"] >= shard_blocks)
    assert ray.get(fresh.where.remote(dist.block_hashes(dist.runner.encode(texts[0]))[0])) == [dist.cache.shard_name]


@pytest.fixture(scope="module")
def private_redis():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_tier_serves_demoted_blocks_and_outages_fail_no_request(ray_cluster, tiny_runner, private_redis):
    # A small pool (8 blocks of 8 tokens) so prompts evict each other; hot blocks go to Redis.
    config = KVCacheConfig(
        **{**BASE, "block_size": 8, "max_tokens": 64}, enable_distributed=True, redis_url=private_redis.url, demote_min_hits=1,
    )
    engine = UltraAdaptiveKVCacheEngine(config, runner=tiny_runner)
    local = UltraAdaptiveKVCacheEngine(KVCacheConfig(**{**BASE, "block_size": 8, "max_tokens": 64}), runner=tiny_runner)
    hot = "Hot prefix shared by many users, kept. "  # 5 blocks with BOS
    run(engine, hot + "A")
    run(engine, hot + "B")  # a hit: the blocks become hot
    for i in range(3):
        run(engine, f"Unrelated prompt number {i} pushes the hot prefix out of the pool.")
    wait_until(lambda: ray.get(engine.cache._shard.stats.remote())["tiers"]["redis"]["writes"] > 0)
    wait_until(lambda: run(engine, hot + "C")["cached_tokens"] > 0 and engine.cache.tier_blocks.get("redis", 0) > 0, timeout_s=30)
    assert run(engine, hot + "D")["token_ids"] == run(local, hot + "D")["token_ids"]

    texts = [hot + f"Q{i}" if i % 2 else f"Filler {i} that evicts the hot prefix again." for i in range(12)]
    results = []
    for i, text in enumerate(texts):
        if i == 3:
            private_redis.stop()
        if i == 8:
            private_redis.start()
        results.append(run(engine, text))
    assert [r["token_ids"] for r in results] == [run(local, t)["token_ids"] for t in texts]
    stats = ray.get(engine.cache._shard.stats.remote())["tiers"]["redis"]
    assert stats["errors"] + stats["timeouts"] + stats["skipped"] > 0  # the outage was seen, and survived
