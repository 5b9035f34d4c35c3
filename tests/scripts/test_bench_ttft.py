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


@pytest.mark.real_model
def test_bench_ttft_runs_on_smollm2_by_name(smollm2_path, tmp_path):
    """`blatam bench ttft --model smollm2` finds the installed model by its catalogue name."""
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / smollm2_path.name).symlink_to(smollm2_path, target_is_directory=True)
    out = tmp_path / "ttft.json"
    done = subprocess.run(
        [sys.executable, "-c", "from scripts.cli import main; main()", "bench", "ttft", "--model", "smollm2",
         "--prompt-tokens", "128", "--new-tokens", "16", "--block-size", "16", "--runs", "1", "--json", str(out)],
        env={**os.environ, "BLATAM_DATA_DIR": str(data)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["model"] == "SmolLM2-135M-Instruct" and result["cached_tokens"] == 112


def test_bench_ttft_names_a_model_it_cannot_find(tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from scripts.cli import main; main()", "bench", "ttft", "--model", "smollm2"],
        env={**os.environ, "BLATAM_DATA_DIR": str(tmp_path), "COLUMNS": "500"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "blatam model pull smollm2" in done.stdout + done.stderr


def test_each_kind_of_trial_takes_every_place_in_the_order_over_the_runs():
    from scripts.bench.ttft import rotated

    kinds = ["uncached", "cached", "ideal"]
    orders = [rotated(kinds, run) for run in range(3)]
    assert orders == [kinds, ["cached", "ideal", "uncached"], ["ideal", "uncached", "cached"]]
    assert rotated(kinds, 4) == orders[1]


def test_each_cached_path_times_prompts_of_its_own(engine):
    """Two paths that share one cache (here the same engine; the shard actor and the served app share a shard)
    must not find each other's prompts: each timed request reuses exactly the shared prefix, 14 blocks, where
    another path's request B before it would leave 15 (all but the block holding the last token)."""
    seen: list[list[int]] = []

    def served(ids: list[int]) -> tuple[float, int]:
        seen.append(ids)
        return 1.0, 224

    result = measure_ttft(engine, prompt_tokens=256, new_tokens=32, runs=5, actor_engine=engine, served=served)
    assert result["cached_tokens_samples"]["cached"] == [224] * 5
    assert result["cached_tokens_samples"]["actor"] == [224] * 5
    assert len({tuple(ids[:224]) for ids in seen}) == 6  # a new prefix every run, the warm-up's included ...
    assert len({tuple(ids) for ids in seen}) == 12  # ... and A and B differ after it
