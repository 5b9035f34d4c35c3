"""oneDNN's per-shape caches are bounded, so prompts of new lengths stop growing the model process's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cache_actors.engine.heap_trim import libc_malloc_trim
from cache_actors.engine.onednn_caches import CAPACITY, VARIABLES, bound_primitive_caches

ROOT = Path(__file__).resolve().parents[2]

# Prompts of new lengths each round on the demo model, in a fresh process (the capacities are read once per
# process), the heap trimmed after each round so only what is held counts: RSS after rounds 1 and 3.
_GROWTH = textwrap.dedent("""
    import asyncio, json, os
    from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
    from cache_actors.engine.batching import BatcherConfig, ContinuousBatcher, SequenceRequest
    from cache_actors.engine.heap_trim import libc_malloc_trim
    from cache_actors.engine.model_runner import ModelRunner
    from cache_actors.engine.sampling import SamplingParams

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    runner = ModelRunner.load(None)
    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=256), runner=runner)
    batcher = ContinuousBatcher(engine, BatcherConfig(max_batch_size=4, max_model_len=512, heap_trim_interval_s=0))
    trim, seen = libc_malloc_trim(), []
    for rnd in range(4):
        for n, length in enumerate(range(40 + rnd, 400, 7)):
            ids = [(rnd * 997 + n * 31 + j * 7) % 500 + 5 for j in range(length)]
            asyncio.run(batcher.generate(SequenceRequest(token_ids=ids, sampling=SamplingParams(max_new_tokens=1))))
        trim()
        seen.append(rss_mib())
    batcher.close()
    print(json.dumps({"rss": seen, "env": {k: os.environ.get(k) for k in ("LRU_CACHE_CAPACITY",
                                                                          "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}}))
""")


def _run(extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | {"PYTHONPATH": str(ROOT)} | extra_env
    run = subprocess.run([sys.executable, "-c", _GROWTH], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_an_operators_setting_wins_over_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "2048")
    assert bound_primitive_caches() == {"LRU_CACHE_CAPACITY": str(CAPACITY), "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "2048"}


@pytest.mark.slow
@pytest.mark.skipif(libc_malloc_trim() is None, reason="RSS net of freed memory needs glibc's malloc_trim")
def test_new_prompt_lengths_stop_growing_memory_once_the_bounded_caches_are_full() -> None:
    bounded = _run({})
    assert bounded["env"] == {name: str(CAPACITY) for name in VARIABLES}
    unbounded = _run({name: "1024" for name in VARIABLES})  # oneDNN's and ideep's own default
    growth = {name: r["rss"][3] - r["rss"][1] for name, r in (("bounded", bounded), ("default", unbounded))}
    print(growth, bounded["rss"], unbounded["rss"])
    # Measured: bounded +0-10 MiB over rounds 2-3 (flat), the default +100-150 MiB (still filling its caches).
    assert growth["bounded"] < 30 and growth["default"] > growth["bounded"] + 50, growth
