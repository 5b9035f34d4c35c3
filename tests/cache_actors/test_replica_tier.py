"""The replica-local tier in front of the shard (`actors.replica_tier`) on a real local Ray cluster:
same tokens as one process, hits without the shard, every block still in the shard, and a clear
on request (whole or a tenant's) or a restarted shard reaching the replica's copies."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine  # noqa: E402
from cache_actors.actors.cluster_admin import clear_shards  # noqa: E402
from cache_actors.actors.replica_tier import ReplicaTieredCache  # noqa: E402
from cache_actors.engine.requests import parse_request  # noqa: E402
from tests.cache_actors.test_distributed_cache import held_blocks, wait_until  # noqa: E402
from tests.conftest import require_no_ray_yet  # noqa: E402

pytestmark = pytest.mark.ray

BASE = {"block_size": 16, "max_tokens": 4096, "cache_strategy": "lru", "max_new_tokens": 6}
# Engines of one model and block size share the node's shard: each test asks prompts of its own.
SYSTEM = "You are the replica tier's careful assistant. Answer briefly and cite the section. " * 3


def run(engine: UltraAdaptiveKVCacheEngine, text: str, tenant: str | None = None) -> dict[str, Any]:
    parsed = parse_request({"text": text, "tenant_id": tenant}, default_max_new_tokens=engine.config.max_new_tokens)
    return engine.generate_ids(parsed, engine.runner.encode(text))


ENGINES: list[UltraAdaptiveKVCacheEngine] = []


@pytest.fixture(scope="module")
def ray_cluster():
    require_no_ray_yet()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        for engine in ENGINES:  # their batchers finish the cache's writes while Ray is still up
            engine.close()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_runner):
    """Greedy tokens of the in-process engine."""
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(**BASE), runner=tiny_runner)
    return lambda text, tenant=None: run(engine, text, tenant)["token_ids"]


def make_engine(tiny_runner, **extra: Any) -> UltraAdaptiveKVCacheEngine:
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(**BASE, enable_distributed=True, redis_url=None, **extra),
                                        runner=tiny_runner)
    assert isinstance(engine.cache, ReplicaTieredCache)
    ENGINES.append(engine)
    return engine


def prefix_blocks(engine: UltraAdaptiveKVCacheEngine, text: str) -> int:
    return len(engine.runner.encode(text)) // engine.config.block_size


def test_a_repeated_prefix_is_served_by_the_replica_and_written_through(ray_cluster, tiny_runner, reference):
    engine = make_engine(tiny_runner)
    prefix = SYSTEM + "Written through. "
    texts = [prefix + f"Question {i}: what is covered?" for i in range(3)]
    results = [run(engine, text) for text in texts]
    assert [r["token_ids"] for r in results] == [reference(t) for t in texts]
    shared = prefix_blocks(engine, prefix)
    assert all(r["cached_tokens"] >= shared * 16 for r in results[1:])
    cache = engine.cache
    assert cache.tier_blocks["replica"] >= 2 * shared and not cache.tier_blocks.get("device")
    # Every block went to the shard too: another replica finds it there.
    cache.flush_writes()
    for text in texts:
        hashes = engine.block_hashes(engine.runner.encode(text))
        assert held_blocks(cache.far._shard, hashes) == len(hashes)
    stats = engine.get_stats()
    assert stats["replica_tier"]["blocks"] >= shared and stats["replica_tier"]["drops"] == 0
    assert stats["queried_blocks"] >= sum(r["cached_tokens"] for r in results) // 16 and not stats["fallbacks"]


def test_another_replica_reads_the_shard_then_uses_its_own_copy(ray_cluster, tiny_runner, reference):
    writer, reader = make_engine(tiny_runner), make_engine(tiny_runner)
    prefix = SYSTEM + "Read from the shard. "
    first, second = prefix + "First question?", prefix + "Second question?"
    run(writer, first)
    writer.cache.flush_writes()
    got = run(reader, first)
    assert got["token_ids"] == reference(first)
    blocks = got["cached_tokens"] // 16
    assert blocks >= prefix_blocks(reader, prefix) and reader.cache.tier_blocks["device"] == blocks
    assert not reader.cache.tier_blocks.get("replica")
    # The prefix the shard served was kept by the reader when it stored its own blocks.
    again = run(reader, second)
    assert again["token_ids"] == reference(second)
    assert reader.cache.tier_blocks["replica"] >= prefix_blocks(reader, prefix)
    assert reader.cache.tier_blocks["device"] == blocks


def test_a_longer_prefix_in_the_shard_wins_over_a_shorter_own_copy(ray_cluster, tiny_runner, reference):
    writer, reader = make_engine(tiny_runner), make_engine(tiny_runner)
    short = SYSTEM + "Shorter own copy. "
    long = short + "Then a long shared passage the writer computed and the reader never saw. " * 3
    run(reader, short + "?")
    run(writer, long + "Question?")
    writer.cache.flush_writes()
    got = run(reader, long + "Another question?")
    assert got["token_ids"] == reference(long + "Another question?")
    assert got["cached_tokens"] // 16 >= prefix_blocks(reader, long)
    assert reader.cache.tier_blocks["device"] >= prefix_blocks(reader, long)


def test_a_shortfall_under_the_gain_threshold_does_not_ask_the_shard(ray_cluster, tiny_runner, reference):
    writer, reader = make_engine(tiny_runner), make_engine(tiny_runner)
    base = SYSTEM + "Small gain: the reader holds this much. "
    longer = base + "And the writer a few words more."  # under MIN_FAR_GAIN_TOKENS beyond the reader's blocks
    run(reader, base + "?")
    run(writer, longer + " Question?")
    writer.cache.flush_writes()
    from_shard = reader.cache.tier_blocks.get("device", 0)  # SYSTEM's blocks may have come from the shard
    got = run(reader, longer + " Another?")
    assert got["token_ids"] == reference(longer + " Another?")
    assert reader.cache.tier_blocks.get("device", 0) == from_shard
    assert got["cached_tokens"] == 16 * prefix_blocks(reader, base + "?")


def test_the_shard_hears_of_the_hits_the_replica_served_alone(ray_cluster, tiny_runner, reference):
    """Its policy and the coordinator must not see a prefix the replicas reuse as never read (`reuse_reports`)."""
    engine = make_engine(tiny_runner)
    text = "Reported reuse comes first here, so no other test shares a block. " + SYSTEM
    hashes = engine.block_hashes(engine.runner.encode(text))
    shard = engine.cache.far._shard

    def shard_hits() -> list[int]:
        _, _, blocks, _ = ray.get(shard.dump_index.remote())
        hits = {block_hash: count for block_hash, _, count in blocks}
        return [hits.get(h, -1) for h in hashes]

    run(engine, text)
    engine.cache.flush_writes()
    assert shard_hits() == [0] * len(hashes)  # stored, never read
    reports = ray.get(shard.stats.remote())["reuse_reports"]
    served = [run(engine, text) for _ in range(2)]
    assert all(r["token_ids"] == reference(text) for r in served)
    assert engine.cache.tier_blocks["replica"] >= 2 * len(hashes) and not engine.cache.tier_blocks.get("device")
    engine.cache.flush_writes()  # what the batcher does when it idles: the reports go alone
    wait_until(lambda: ray.get(shard.stats.remote())["reuse_reports"] >= reports + 2)
    reused = served[0]["cached_tokens"] // 16
    assert reused >= len(hashes) - 1 and shard_hits()[:reused] == [2] * reused


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_a_clear_on_request_reaches_the_replica_copies(ray_cluster, tiny_runner, reference, tenant):
    engine = make_engine(tiny_runner, tenant_isolation=True)
    text = SYSTEM + f"Cleared for {tenant}: what stays?"
    run(engine, text, tenant)
    assert run(engine, text, tenant)["cached_tokens"] > 0 and engine.cache.tier_blocks["replica"] > 0
    engine.cache.flush_writes()
    outcomes = clear_shards(tenant)  # what `blatam cache clear [--tenant]` runs
    assert outcomes and all(o.ok for o in outcomes)
    after = run(engine, text, tenant)
    assert after["cached_tokens"] == 0 and after["token_ids"] == reference(text, tenant)
    assert engine.cache.drops == 1 and engine.get_stats()["replica_tier"]["drops"] == 1
    # Stored afresh, and served by the replica again.
    assert run(engine, text, tenant)["cached_tokens"] > 0


def test_engine_clear_cache_drops_both_levels(ray_cluster, tiny_runner, reference):
    engine = make_engine(tiny_runner)
    text = SYSTEM + "Engine clear: gone from both?"
    run(engine, text)
    engine.cache.flush_writes()
    # A whole clear refuses while any client (the other tests' engines too) holds a lease: retried until none does.
    wait_until(lambda: (engine.clear_cache(), True)[1], timeout_s=30)
    assert engine.cache.near.get_stats()["blocks"] == 0 and engine.get_stats()["blocks"] == 0
    assert run(engine, text)["cached_tokens"] == 0


def test_no_tier_when_its_budget_is_zero(ray_cluster, tiny_runner):
    engine = UltraAdaptiveKVCacheEngine(
        KVCacheConfig(**BASE, enable_distributed=True, redis_url=None, replica_tier_mb=0), runner=tiny_runner)
    ENGINES.append(engine)
    assert not isinstance(engine.cache, ReplicaTieredCache) and "replica_tier" not in engine.get_stats()


def test_a_restarted_shard_is_never_bypassed_by_old_copies(ray_cluster, tiny_runner, reference):
    """Runs last in this module: it kills the shard the others share."""
    engine = make_engine(tiny_runner)
    text = SYSTEM + "Restart: which copy is used?"
    run(engine, text)
    assert run(engine, text)["cached_tokens"] > 0
    engine.cache.flush_writes()
    shard = engine.cache.far._shard
    old_epoch = ray.get(shard.ping.remote())["epoch"]
    ray.kill(shard, no_restart=False)
    wait_until(lambda: engine.cache.far.coherence() is None, timeout_s=30)
    # While the old pool is gone the replica's copies are not used: the answer comes from the (new) shard or
    # a recompute, and is the same.
    hits_before = engine.cache.tier_blocks["replica"]
    assert run(engine, text)["token_ids"] == reference(text)
    assert engine.cache.tier_blocks["replica"] == hits_before
    wait_until(lambda: ray.get(shard.ping.remote(), timeout=5)["epoch"] != old_epoch, timeout_s=60)
    # A clear on the new shard could not be seen through the old pool: the new pool made the replica drop its copies.
    wait_until(lambda: run(engine, SYSTEM + "Restart: after?")["token_ids"] and engine.cache.drops >= 1)
    assert engine.cache.drops == 1
    assert run(engine, text)["token_ids"] == reference(text)
