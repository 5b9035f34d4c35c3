"""`blatam bench serve`: the workloads and metrics (pure), then the real command on tiny sizes.

The command test runs the CLI in a subprocess: the benchmark starts its own
private Ray + Serve and kills the KV actors between routings, which must
not touch a Ray instance other tests in this session share.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.bench.serve_workloads import (
    RequestRecord,
    load_balance,
    make_workload,
    messages_for,
    percentile,
    summarize,
    unique_prompts,
)


def test_multitenant_requests_share_their_tenants_system_prompt_only():
    sessions = make_workload("multitenant", requests=40, tenants=4, prefix_tokens=200, question_tokens=16, seed=3)
    assert len(sessions) == 40 and all(len(s.turns) == 1 for s in sessions)
    by_tenant: dict[str, set[str]] = {}
    for s in sessions:
        by_tenant.setdefault(s.tenant_id, set()).add(s.system)
        assert len(s.system.encode()) >= 200 and len(s.turns[0].encode()) >= 16
    assert all(len(systems) == 1 for systems in by_tenant.values())  # one prompt per tenant
    assert len({next(iter(v)) for v in by_tenant.values()}) == len(by_tenant)  # distinct across tenants
    assert len({s.turns[0] for s in sessions}) == 40  # every question unique
    again = make_workload("multitenant", requests=40, tenants=4, prefix_tokens=200, question_tokens=16, seed=3)
    assert again == sessions  # seeded


def test_zipf_skews_tenant_popularity():
    sessions = make_workload("multitenant", requests=400, tenants=8, prefix_tokens=8, zipf=1.5, seed=0)
    counts = {t: sum(s.tenant_id == t for s in sessions) for t in {s.tenant_id for s in sessions}}
    assert counts["tenant-0"] > 3 * counts.get("tenant-7", 0)


def test_unique_and_chat_workloads():
    unique = make_workload("unique", requests=5, prefix_tokens=64)
    assert len({s.system for s in unique}) == 5
    chat = make_workload("chat", requests=10, turns=4, prefix_tokens=32)
    assert [len(s.turns) for s in chat] == [4, 4, 2]
    messages = messages_for(chat[0], 2, ["first answer", "second answer"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "first answer" and messages[-1]["content"] == chat[0].turns[2]
    with pytest.raises(ValueError):
        messages_for(chat[0], 2, ["only one answer"])
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("bogus", requests=1)
    assert len({s.system for s in unique_prompts(6, prompt_tokens=32)}) == 6


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 95) == 95
    with pytest.raises(ValueError):
        percentile([], 50)


def _record(sent: float, first: float, done: float, replica: str, *, prompt: int = 100, cached: int = 0, out: int = 10):
    return RequestRecord(sent_s=sent, first_token_s=first, done_s=done, prompt_tokens=prompt, completion_tokens=out,
                         cached_tokens=cached, replica=replica)


def test_summary_rates_hit_rate_and_balance():
    records = [_record(0, 0.1, 1, "a", cached=80), _record(0, 0.3, 2, "a"), _record(1, 1.2, 2, "b", cached=50)]
    summary = summarize(records, replicas=["a", "b", "c"])
    assert summary["wall_s"] == 2 and summary["requests_per_s"] == 1.5 and summary["output_tokens_per_s"] == 15
    assert summary["token_hit_rate"] == pytest.approx(130 / 300)
    assert summary["ttft_p50_ms"] == pytest.approx(200)
    assert summary["requests_per_replica"] == {"a": 2, "b": 1, "c": 0}
    assert summary["load_max_over_mean"] == pytest.approx(2 / 1)  # c got nothing but counts in the mean
    # a was busy 3 s of 2 (two at once), b 1 s, c 0: mean 4/3, max 3.
    assert summary["in_flight_max_over_mean"] == pytest.approx(3 / (4 / 3))
    balanced = load_balance([_record(0, 0, 1, "a"), _record(0, 0, 1, "b")], ["a", "b"])
    assert balanced["load_max_over_mean"] == 1.0 and balanced["in_flight_max_over_mean"] == 1.0


def test_ttft_without_any_token_is_the_whole_request():
    assert RequestRecord(sent_s=1.0, done_s=1.5).ttft_ms == pytest.approx(500)


@pytest.mark.ray
@pytest.mark.slow
def test_bench_serve_command_on_tiny_settings(tmp_path: Path):
    out = tmp_path / "serve.json"
    blatam = Path(sys.executable).with_name("blatam")
    command = [str(blatam)] if blatam.exists() else [sys.executable, "-c", "from scripts.cli import main; main()"]
    args = ["bench", "serve", "--quick", "--replicas", "2", "--routing", "both", "--requests", "8",
            "--concurrency", "2", "--max-tokens", "4", "--batching", "1,2", "--json", str(out)]
    done = subprocess.run(command + args, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {r["routing"]: r for r in result["runs"]}
    assert set(runs) == {"affinity", "pow2"}
    for run in runs.values():
        assert run["requests"] == 8 and run["output_tokens"] > 0
        assert 0.0 <= run["token_hit_rate"] <= 1.0
        assert run["requests_per_s"] > 0 and run["output_tokens_per_s"] > 0
        assert 0 < run["ttft_p50_ms"] <= run["ttft_p95_ms"] <= run["ttft_p99_ms"]
        assert sum(run["requests_per_replica"].values()) == 8 and run["load_max_over_mean"] >= 1.0
        assert len({s["shard"] for s in run["replica_stats"]}) == 2  # one shard per replica
    # Only the cache-aware router keeps decision counts; Serve's pow2 router is a different router.
    assert sum(runs["affinity"]["router_decisions"].values()) >= 8
    assert runs["pow2"]["router_decisions"] is None
    # The repeated tenant prompts hit under affinity routing (4 tenants, 8 requests).
    assert runs["affinity"]["cached_tokens"] > 0
    levels = [b["concurrency"] for b in result["batching"]]
    assert levels == [1, 2]
    assert all(b["output_tokens_per_s"] > 0 for b in result["batching"])
    assert result["batching"][0]["ratio_to_one_at_a_time"] == 1.0
    assert set(result["goals"]) >= {"hit_rate_ratio", "ttft_p50_ratio", "routing_met"}
