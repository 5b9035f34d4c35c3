"""`blatam bench prefill` on the tiny model (structure and ratios, not speed)."""

from __future__ import annotations

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from scripts.bench.prefill_stall import measure_prefill_stall


def test_prefill_stall_reports_both_settings_and_ratios():
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=8192),
                                        runner=ModelRunner.load(None, demo_spec=TINY_SPEC))
    result = measure_prefill_stall(long_tokens=192, chunk=32, decoders=2, trials=1, decode_tokens=96, engine=engine)
    assert set(result["settings"]) == {"whole", "chunked"}
    for row in result["settings"].values():
        assert row["ttft_ms"] > 0 and row["max_gap_ms"] >= row["p99_gap_ms"] >= 0
    assert result["ttft_ratio"] > 0
    assert result["stall_ratio"] is None or result["stall_ratio"] > 0
