"""`blatam bench peers` end to end: it starts serve_config.yaml's llm app itself (in a subprocess, its own
Ray), measures it against our own llm app standing in for vLLM (the demo model, a small workload) and stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from deployments.llm import build_llm
from tests.deployments.conftest import run_app

ROOT = Path(__file__).resolve().parents[2]


PEER_APP = "bench-peer"
SMALL = ["--prompt-tokens", "129", "--cached-tokens", "64", "--short-prompt-tokens", "16", "--new-tokens", "8",
         "--sequential", "2", "--concurrency", "4", "--rounds", "5"]


@pytest.fixture(scope="module")
def peer_url(serve_instance) -> Iterator[str]:
    """Our own llm app on the demo model, standing in for vLLM (no CPU reserved: the bench's own Ray has them)."""
    run_app(build_llm({"max_model_len": 512, "max_batch_size": 4, "cache": {"block_size": 16, "max_memory_mb": 32}}),
            name=PEER_APP, route_prefix=f"/{PEER_APP}")
    yield f"{serve_instance.base_url}/{PEER_APP}"
    serve.delete(PEER_APP)


def test_bench_peers_starts_our_llm_app_measures_both_and_stops_it(peer_url: str, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, "-c", "from scripts.cli import main; main()", "bench", "peers", "--peer-url", peer_url,
         "--peer-name", "ourselves", "--json", str(out), "--quiet-wait-s", "0", *SMALL],
        cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["ratio"]) == {"ttft_uncached", "ttft_cached", "tok_s_1", "tok_s_16"}
    for side in ("ours", "peer"):
        assert result[side]["prompt_tokens"] == 129 and result[side]["cached_tokens"] == 64
        assert all(len(values) == 5 for values in result[side]["samples"].values())
        assert result[side]["ttft_cached_ms"] > 0 and result[side]["tok_s_16"] > 0
    # The other test worker keeps the CPUs busy: told not to wait for quiet ones, it never did.
    assert result["ours"]["quiet_wait_s"] == 0 and result["peer"]["quiet_wait_s"] == 0
    assert result["ratio"]["tok_s_1"] == pytest.approx(result["ours"]["tok_s_1"] / result["peer"]["tok_s_1"])
    # Ours ran as serve_config.yaml deploys it: the model replica's torch threads are its CPUs.
    assert result["ours"]["replica"]["torch_threads"] == min(2, os.cpu_count() or 1)
    # ... in float32 (--dtype's default, as the README starts vLLM-CPU), not the file's `auto` (bf16 with AMX).
    assert result["ours"]["replica"]["dtype"] == "float32"
    assert "ourselves" in done.stdout and "ours/peer" in done.stdout
    # Where the CPU went: the machine's per run for both, ours by process (the peer runs in another Ray: no roles).
    for side in ("ours", "peer"):
        assert all(result[side]["cpu"][m]["machine_ms"] > 0 for m in result["ratio"]), result[side]["cpu"]
    assert result["peer"]["cpu"]["tok_s_16"]["roles_ms"] is None
    roles = result["ours"]["cpu"]["tok_s_16"]["roles_ms"]
    # HAProxy in front (the default), the API in the model's replica (one replica: scripts/up_ingress.py)
    assert {"LLMServer", "HAProxy"} <= set(roles) and "LLMIngress" not in roles and roles["LLMServer"] > 0, roles
    assert "Our CPU per run by process" in done.stdout and "CPU per run, the whole machine" in done.stdout
    # ... and was stopped: its port no longer answers.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{result['ours']['url']}/models", timeout=5)


def test_bench_ttft_times_the_cached_request_served_beside_the_in_process_engine(peer_url: str) -> None:
    """`blatam bench ttft --served --distributed`'s measure: the served and shard-actor trials join the rotation,
    the served ratio is over the engine's, and neither path's timed request finds the other's prompts cached
    (here both use one shard: the served app's model and block size)."""
    from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
    from scripts.bench.ttft import measure_ttft
    from scripts.bench.ttft_served import ServedTTFT

    config = KVCacheConfig(block_size=16, max_tokens=4096, cache_strategy="lru")
    engine = UltraAdaptiveKVCacheEngine(config)
    actor = UltraAdaptiveKVCacheEngine(config.model_copy(update={"enable_distributed": True, "redis_url": None}),
                                       runner=engine.runner)
    try:
        with ServedTTFT(peer_url) as served:
            result = measure_ttft(engine, prompt_tokens=129, new_tokens=17, runs=3, served=served,
                                  actor_engine=actor)
    finally:
        actor.close()
        engine.close()
    assert len(result["samples_ms"]["served"]) == 3 and result["served_ms"] > 0
    assert result["served_overhead"] == pytest.approx(result["served_ms"] / result["cached_ms"])
    # Every timed request reused exactly the shared prefix, 7 blocks of 16: no more (another path's prompt).
    assert result["cached_tokens_samples"] == {"cached": [112] * 3, "actor": [112] * 3, "served": [112] * 3}
