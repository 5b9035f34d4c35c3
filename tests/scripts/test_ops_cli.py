"""`blatam status`, `blatam stats` and `blatam monitor` against a running cluster, as an operator runs them.

A `ray start --head` cluster of the test's own (tests/scripts/ray_head.py)
reporting metrics every second, the LLM app deployed on it by a driver that
then exits (Serve apps are detached), real completions sent to it over HTTP,
then each verb in another process with ``--address``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.ops.status_cli import _problems
from cache_actors.actors.cluster_view import CacheView, CoordinatorView, ShardView
from scripts.ops.serve_view import AppView
from tests.deployments.conftest import free_port
from tests.scripts.ray_head import ray_env, ray_head, run_blatam, run_python

ARGS = {"num_replicas": 1, "max_model_len": 512, "max_batch_size": 4, "max_tokens_limit": 64,
        "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 8}}
PROMPT = "You are the assistant of ACME Corp. Answer briefly, in plain words, and cite the policy. " * 3


def _complete(base: str, model: str, question: str) -> dict:
    body = {"model": model, "prompt": PROMPT + question, "max_tokens": 4, "temperature": 0}
    answer = httpx.post(f"{base}/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, str], str, str]]:
    with ray_head("bo", f"--metrics-export-port={free_port()}", num_cpus=2,
                  head_env={"RAY_metrics_report_interval_ms": "1000"}) as (address, env):
        port = free_port()
        deployed = run_python(f"""
            import time, ray
            from ray import serve
            from deployments.llm import build_llm
            deadline = time.monotonic() + 60
            while True:  # the head may still be starting
                try:
                    ray.init(address="{address}", log_to_driver=False)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            serve.start(http_options={{"host": "127.0.0.1", "port": {port}}})
            serve.run(build_llm({ARGS!r}), name="llm", route_prefix="/v1")
            """, {**env, "RAY_AUTH_MODE": "token"}, timeout_s=420)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        base = f"http://127.0.0.1:{port}/v1"
        model = httpx.get(f"{base}/models", timeout=60).json()["data"][0]["id"]
        for i in range(3):  # the shared prefix is cached by the first, hit by the others
            _complete(base, model, f"Question {i}?")
        yield address, env, base, model


def _json(done) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.ray
@pytest.mark.slow
def test_status_lists_the_app_its_replicas_the_shard_and_the_coordinator(served) -> None:
    address, env, _, _ = served
    status = _json(run_blatam(env, "status", "--address", address, "--json"))
    assert status["problems"] == [] and status["serve"] == "running"
    (llm,) = [a for a in status["applications"] if a["name"] == "llm"]
    assert llm["status"] == "RUNNING"
    assert {d["name"]: d["replicas"] for d in llm["deployments"]}["LLMServer"] == {"RUNNING": 1}
    (shard,) = status["shards"]
    assert shard["reachable"] and 0 < shard["blocks"] <= shard["capacity_blocks"]
    assert 0 < shard["bytes_used"] <= shard["bytes_capacity"] and shard["seq"] > 0
    assert status["coordinator"]["reachable"] and status["coordinator"]["shards"] == 1
    assert status["coordinator"]["snapshots_on"] is False  # no Redis in this app's config

    table = run_blatam({**env, "COLUMNS": "200"}, "status", "--address", address)
    assert table.returncode == 0, table.stderr[-3000:]
    for expected in ("Applications", "LLMServer", "RUNNING 1", "KV shards", "Coordinator: index"):
        assert expected in table.stdout, table.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_stats_count_the_hits_of_the_shared_prefix(served) -> None:
    address, env, _, _ = served
    deadline = time.monotonic() + 60
    while True:  # Ray exports every second here; the replica's first counts may trail
        stats = _json(run_blatam(env, "stats", "--address", address, "--json"))
        total = stats["total"]
        if total["hit_tokens"].get("device", 0) > 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert stats["failures"] == [] and stats["endpoints"] == 1
    assert total["hit_tokens"]["device"] > 0 and total["queried_tokens"] >= total["saved_tokens"]
    assert 0 < total["hit_rate"] <= 1 and total["stored_blocks"] > 0
    assert list(stats["shards"]) and all(name.startswith("kvshard:") for name in stats["shards"])
    table = run_blatam({**env, "COLUMNS": "200"}, "stats", "--address", address)
    assert table.returncode == 0 and "total" in table.stdout and "hit rate" in table.stdout, table.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_monitor_shows_the_request_rate_while_requests_run(served) -> None:
    address, env, base, model = served
    stop = threading.Event()

    def traffic() -> None:
        i = 100
        while not stop.is_set():
            _complete(base, model, f"Question {i}?")
            i += 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(3)
        done = run_blatam({**env, "COLUMNS": "200"}, "monitor", "--address", address, "--interval", "3", "--iterations", "2")
    finally:
        stop.set()
        sender.join(timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = done.stdout
    print(frame)  # -s shows what an operator sees
    assert "requests/s" in frame and "KV cache" in frame and "kvshard" not in frame, frame
    last = frame.rsplit("running / waiting", 1)[1].splitlines()[1]  # the last frame's LLM row, in its panel
    row = last.strip("│ ").split()
    assert float(row[0].replace(",", "")) > 0, frame  # requests/s over the last interval
    assert float(row[1].replace(",", "")) > 0, frame  # generated tokens/s


def _shard_blocks(address: str, env: dict[str, str]) -> int:
    return sum(shard["blocks"] for shard in _json(run_blatam(env, "status", "--address", address, "--json"))["shards"])


@pytest.mark.ray
@pytest.mark.slow
def test_persist_clear_load_brings_the_hits_back_and_a_damaged_or_foreign_set_changes_nothing(served, tmp_path) -> None:
    address, env, base, model = served
    _complete(base, model, "What is the refund policy?")
    held = _shard_blocks(address, env)
    assert held > 0
    backup = tmp_path / "kv-backup"
    parts = _json(run_blatam(env, "cache", "persist", str(backup), "--address", address, "--json"))
    assert [p["ok"] for p in parts] == [True] and parts[0]["blocks"] == held
    assert (backup / "cluster.json").is_file() and (backup / "part-000" / "blocks.safetensors").is_file()

    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    assert _shard_blocks(address, env) == 0
    loaded = _json(run_blatam(env, "cache", "load", str(backup), "--address", address, "--json"))
    assert [p["ok"] for p in loaded] == [True] and loaded[0]["blocks"] == held
    assert _shard_blocks(address, env) == held
    again = _complete(base, model, "What is the refund policy?")  # the prompt's blocks came back from disk
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16 * (held // 2), again["usage"]

    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    tensors = damaged / "part-000" / "blocks.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-7] ^= 0xFF
    tensors.write_bytes(bytes(data))
    refused = run_blatam(env, "cache", "load", str(damaged), "--address", address)
    assert refused.returncode == 1 and "checksum mismatch" in refused.stdout + refused.stderr, refused.stdout
    assert _shard_blocks(address, env) == 0

    foreign = tmp_path / "foreign"  # a set from another model: its manifests are consistent, its blocks are not ours
    shutil.copytree(backup, foreign)
    part_manifest = foreign / "part-000" / "manifest.json"
    manifest = json.loads(part_manifest.read_text())
    manifest["namespace"]["model_id"] = "someone-elses-model"
    part_manifest.write_text(json.dumps(manifest))
    cluster = json.loads((foreign / "cluster.json").read_text())
    cluster["parts"][0]["manifest_sha256"] = hashlib.sha256(part_manifest.read_bytes()).hexdigest()
    (foreign / "cluster.json").write_text(json.dumps(cluster))
    refused = run_blatam({**env, "COLUMNS": "300"}, "cache", "load", str(foreign), "--address", address)
    assert refused.returncode == 1 and "another model" in refused.stdout, refused.stdout + refused.stderr
    assert _shard_blocks(address, env) == 0
    nothing = run_blatam(env, "cache", "load", str(tmp_path / "nowhere"), "--address", address)
    assert nothing.returncode == 1 and "not a persisted cluster cache" in nothing.stderr, nothing.stderr


def test_problems_name_what_is_not_healthy() -> None:
    apps = [AppView("llm", "RUNNING"), AppView("export", "DEPLOY_FAILED")]
    view = CacheView(
        shards=[ShardView("kvshard:f:n1:cpu0", "n1", "cpu0", True, tiers={"redis": {"reachable": False, "detail": "x"}}),
                ShardView("kvshard:f:n2:cpu0", "n2", "cpu0", False, error="no answer within 10 s")],
        coordinator=CoordinatorView(False, error="ActorDiedError"))
    problems = _problems(apps, view)
    assert len(problems) == 4 and "export is DEPLOY_FAILED" in problems[0]
    assert any("tier redis unreachable" in p for p in problems) and any("n2" in p for p in problems)
    assert _problems([AppView("llm", "RUNNING")], CacheView([], None)) == []


@pytest.mark.ray
@pytest.mark.parametrize("verb", ["status", "stats", "monitor"])
def test_an_unreachable_cluster_is_one_line_and_exit_2(verb: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run_blatam(ray_env(tmp_path), verb, "--address", address)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and address in lines[0] and lines[0].startswith(f"blatam {verb}: "), done.stderr
