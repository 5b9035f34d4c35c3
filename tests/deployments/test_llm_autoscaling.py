"""The model server autoscales under load, and the replica it adds is served by its node's KV shard.

The LLM app on the session's 2-CPU cluster with Serve's autoscaling (1 to 2
replicas of 1 CPU each, a target of 1 ongoing request, 1 s upscale delay),
concurrent completions over HTTP until Serve reports two running replicas,
then Ray's own metrics (the ones `blatam stats` reads) must show a process
that was not there before the load looking up prompts in the node's shard
and getting hits from its device tier: blocks the first replica stored.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments.llm import build_llm
from tests.deployments.conftest import ServeInstance, run_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "llm-autoscale"
ARGS = {
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                           "upscale_delay_s": 1, "downscale_delay_s": 600},
    "num_cpus": 1, "max_model_len": 512, "max_batch_size": 4, "max_tokens_limit": 256,
    "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 16},
}
PREFIX = "You are the assistant of a bakery supplier. Answer in plain words and cite the policy section. " * 3
SCALE_TIMEOUT_S = 240.0
METRICS_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def base_url(serve_instance: ServeInstance) -> Iterator[str]:
    from ray import serve

    run_app(build_llm(ARGS), name=APP, route_prefix="/autoscale/v1")
    try:
        yield f"{serve_instance.base_url}/autoscale/v1"
    finally:
        serve.delete(APP)


def _replicas_running() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return app.deployments["LLMServer"].replica_states.get("RUNNING", 0) if app else 0


def _shard_lookups() -> dict[str, dict[str, float]]:
    """{worker id: {"queried": tokens, "device_hits": tokens}} of every process using a CPU shard."""
    from cache_actors.actors.cluster_view import metrics_urls
    from scripts.ops.cluster_metrics import scrape

    out: dict[str, dict[str, float]] = {}
    for s in scrape(metrics_urls()).samples:
        if not s.labels.get("shard", "").endswith(":cpu0") or "WorkerId" not in s.labels:
            continue
        row = out.setdefault(s.labels["WorkerId"], {"queried": 0.0, "device_hits": 0.0})
        if s.name == "ray_kv_cache_queried_tokens_total":
            row["queried"] += s.value
        elif s.name == "ray_kv_cache_hit_tokens_total" and s.labels.get("tier") == "device":
            row["device_hits"] += s.value
    return out


def test_load_adds_a_replica_that_hits_the_nodes_shard(base_url: str) -> None:
    model = httpx.get(f"{base_url}/models", timeout=60).json()["data"][0]["id"]
    first = httpx.post(f"{base_url}/completions", timeout=120, json={
        "model": model, "prompt": PREFIX + "Warm-up?", "max_tokens": 2, "temperature": 0})
    assert first.status_code == 200, first.text
    assert _replicas_running() == 1
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while True:  # Ray exports every 10 s
        before = _shard_lookups()
        if any(row["queried"] for row in before.values()):
            break
        assert time.monotonic() < deadline, "the first replica's lookups never reached the metrics"
        time.sleep(2)

    stop = threading.Event()
    errors: list[str] = []

    def sender(worker: int) -> None:
        i = 0
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                body = {"model": model, "prompt": PREFIX + f"Question {worker}-{i}?", "max_tokens": 48,
                        "temperature": 0}
                answer = client.post(f"{base_url}/completions", json=body)
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code}: {answer.text[:200]}")
                i += 1

    senders = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(6)]
    for thread in senders:
        thread.start()
    try:
        deadline = time.monotonic() + SCALE_TIMEOUT_S
        while _replicas_running() < 2:
            assert time.monotonic() < deadline, f"no second replica within {SCALE_TIMEOUT_S:g} s"
            time.sleep(1)
        deadline = time.monotonic() + METRICS_TIMEOUT_S
        while True:  # the load goes on, so the new replica takes requests; its counters arrive with Ray's export
            new = {w: row for w, row in _shard_lookups().items() if w not in before and row["queried"]}
            if any(row["device_hits"] > 0 for row in new.values()):
                break
            assert time.monotonic() < deadline, f"no new process hit the node's shard: {new}, before {before}"
            time.sleep(2)
    finally:
        stop.set()
        for thread in senders:
            thread.join(timeout=180)
    assert errors == [], errors[:5]


def test_choices_and_prompt_lists_complete_across_replicas(base_url: str) -> None:
    """With two replicas the cache-aware router ranks each call of the ingress's `n` choices, which once
    waited forever behind the first (see `deployments.common.serve_calls`)."""
    deadline = time.monotonic() + SCALE_TIMEOUT_S
    while _replicas_running() < 2:  # the test above scaled it out; it scales in only after 10 quiet minutes
        assert time.monotonic() < deadline, "the app does not run two replicas"
        time.sleep(1)
    model = httpx.get(f"{base_url}/models", timeout=60).json()["data"][0]["id"]
    with httpx.Client(timeout=90) as client:
        for body in ({"prompt": PREFIX + "Choices?", "n": 4},
                     {"prompt": PREFIX + "Streamed choices?", "n": 4, "stream": True}):
            answer = client.post(f"{base_url}/completions", json={"model": model, "max_tokens": 4, "temperature": 0.8,
                                                                   **body})
            assert answer.status_code == 200, answer.text
            indexes = ([c["index"] for c in answer.json()["choices"]] if not body.get("stream") else
                       sorted({json.loads(line[6:])["choices"][0]["index"] for line in answer.text.splitlines()
                               if line.startswith("data: {") and json.loads(line[6:])["choices"]}))
            assert sorted(indexes) == list(range(4)), answer.text[:500]
