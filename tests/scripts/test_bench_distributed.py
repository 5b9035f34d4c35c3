"""The distributed-cache benchmarks on tiny sizes (structure and ratios, not speed)."""

from __future__ import annotations

import pytest

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from scripts.bench.coordinator import measure_index

ray = pytest.importorskip("ray")


def test_coordinator_index_measure_reports_rates_memory_and_lookups():
    row = measure_index(2_000, 8, lookups=50)
    assert row["blocks"] == 2_000 and row["applied_events"] == 2_000
    assert row["events_per_s"] > 0 and row["bytes_per_block"] > 32
    assert all(row[key] > 0 for key in ("where_us", "route_us", "locate_us"))


@pytest.fixture(scope="module")
def ray_local():
    """This process's Ray cluster (the session's Serve one when it runs), else a private local one."""
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_ttft_with_actor_engine_reports_actor_overhead(ray_local):
    from scripts.bench.ttft import measure_ttft

    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    config = KVCacheConfig(block_size=16, max_tokens=4096, cache_strategy="lru")
    engine = UltraAdaptiveKVCacheEngine(config, runner=runner)
    actor_engine = UltraAdaptiveKVCacheEngine(config.model_copy(update={"enable_distributed": True, "redis_url": None}), runner=runner)
    result = measure_ttft(engine, prompt_tokens=256, new_tokens=16, runs=2, actor_engine=actor_engine)
    assert result["actor_cached_tokens"] == 240
    assert result["actor_overhead"] == pytest.approx(result["actor_ms"] / result["ideal_ms"])


@pytest.mark.ray
def test_dataplane_rows_have_the_documented_fields(ray_local):
    from scripts.bench.dataplane import measure_dataplane

    result = measure_dataplane(sizes=(1, 4), repeats=1, object_store=True)
    assert [(r["transport"], r["blocks"]) for r in result["sizes"]] == [
        ("shared_memory", 1), ("shared_memory", 4), ("object_store", 1), ("object_store", 4)]
    for row in result["sizes"]:
        assert row["ratio"] == pytest.approx(min(row["get_mb_s"], row["put_mb_s"]) / row["memcpy_mb_s"])
