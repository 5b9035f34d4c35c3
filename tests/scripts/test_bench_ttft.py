"""The TTFT benchmark's measurement on the tiny model (structure and hits, not speed)."""

from __future__ import annotations

import pytest

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from scripts.bench.ttft import measure_ttft


@pytest.fixture(scope="module")
def engine() -> UltraAdaptiveKVCacheEngine:
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    return UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=4096, cache_strategy="lru"), runner=runner)


def test_measure_ttft_reports_medians_and_ratios(engine):
    result = measure_ttft(engine, prompt_tokens=256, new_tokens=16, runs=2)
    for key in ("uncached_ms", "cached_ms", "ideal_ms", "speedup", "overhead"):
        assert result[key] > 0
    assert result["cached_tokens"] == 240  # the whole shared prefix, in 16-token blocks
    assert result["speedup"] == pytest.approx(result["uncached_ms"] / result["cached_ms"])
    assert result["overhead"] == pytest.approx(result["cached_ms"] / result["ideal_ms"])
    assert len(result["samples_ms"]["cached"]) == 2


def test_measure_ttft_rejects_impossible_shapes(engine):
    with pytest.raises(ValueError):
        measure_ttft(engine, prompt_tokens=100, new_tokens=100, runs=1)
    with pytest.raises(ValueError):
        measure_ttft(engine, prompt_tokens=5000, new_tokens=10, runs=1)
