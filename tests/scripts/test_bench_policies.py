"""`blatam bench gen-trace` and `blatam bench policies` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cache_actors.policies import simulator as policy_sim
from cache_actors.policies.simulator import TraceRequest, load_trace, prepare_trace, write_trace
from scripts.bench import traces
from scripts.bench.traces import WORKLOADS, generate
from scripts.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["bench", *args], catch_exceptions=False)


def test_cli_block_default_is_the_simulators() -> None:
    # repeated in scripts.bench.traces so that `blatam --help` need not import the cache engine (torch)
    assert traces.DEFAULT_BLOCK_TOKENS == policy_sim.DEFAULT_BLOCK_TOKENS


@pytest.mark.parametrize("workload", WORKLOADS)
def test_generators_are_seeded_and_consistent(workload: str) -> None:
    a = generate(workload, 300, seed=5)
    assert a == generate(workload, 300, seed=5)
    assert a != generate(workload, 300, seed=6)
    assert len(a) == 300
    assert all(x.timestamp <= y.timestamp for x, y in zip(a, a[1:]))
    trace = prepare_trace(a)  # block counts match input lengths at 512 tokens
    assert trace.unique_blocks < trace.total_blocks  # some reuse exists
    # equal ids mean an equal prefix: an id is always found under the same parent
    parent_of: dict[int, int | None] = {}
    for req in a:
        for i, hid in enumerate(req.hash_ids):
            parent = req.hash_ids[i - 1] if i else None
            assert parent_of.setdefault(hid, parent) == parent


def test_default_workloads_have_realistic_sizes() -> None:
    trace = prepare_trace(generate("mixed"))
    assert trace.num_requests >= 1000
    assert 10_000 <= trace.unique_blocks <= 100_000


def test_gen_trace_writes_mooncake_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "agent.jsonl"
    result = run("gen-trace", "--workload", "agent", "--requests", "120", "--out", str(out), "--seed", "1")
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 120
    assert set(json.loads(lines[0])) == {"timestamp", "input_length", "output_length", "hash_ids"}
    assert load_trace(out) == generate("agent", 120, seed=1)


def test_gen_trace_refuses_unknown_workload(tmp_path: Path) -> None:
    result = run("gen-trace", "--workload", "nope", "--out", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 2
    assert "supported" in result.output


def test_policies_on_a_hand_made_trace(tmp_path: Path) -> None:
    trace = tmp_path / "tiny.jsonl"
    write_trace(
        trace,
        [
            TraceRequest(0.0, 7, 1, (1, 2)),
            TraceRequest(1000.0, 12, 1, (1, 3, 4)),
            TraceRequest(2000.0, 8, 1, (1, 2)),
            TraceRequest(3000.0, 10, 1, (1, 3, 4)),
            TraceRequest(4000.0, 2, 1, (5,)),
        ],
    )
    out = tmp_path / "res.json"
    result = run(
        "policies", "--trace", str(trace), "--block-tokens", "4", "--capacities", "3",
        "--policies", "lru,lfu,adaptive", "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (doc["requests"], doc["unique_blocks"], doc["tokens_total"]) == (5, 5, 39)
    by_policy = {r["policy"]: r for r in doc["results"]}
    assert list(by_policy) == ["lru", "lfu", "adaptive", "belady"]
    for r in doc["results"]:
        assert {"policy", "capacity_blocks", "capacity_fraction", "hit_rate", "tokens_saved"} <= set(r)
        assert r["capacity_blocks"] == 3 and r["capacity_fraction"] == pytest.approx(0.6)
    # worked out by hand in tests/cache_actors/test_policy_sim.py
    assert by_policy["lru"]["tokens_saved"] == 16 and by_policy["lru"]["hit_rate"] == pytest.approx(4 / 11)
    assert by_policy["belady"]["tokens_saved"] == 20 and by_policy["belady"]["vs_lru"] == pytest.approx(1.25)
    assert (tmp_path / "res.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "belady" in result.output and "tokens saved" in result.output


def test_policies_on_a_generated_workload(tmp_path: Path) -> None:
    out = tmp_path / "mt.json"
    result = run(
        "policies", "--workload", "multiturn", "--requests", "400", "--capacities", "0.02,0.2",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())["results"]
    assert len(results) == 2 * 4  # lru, lfu, adaptive + belady at two capacities
    for cap in {r["capacity_blocks"] for r in results}:
        row = {r["policy"]: r for r in results if r["capacity_blocks"] == cap}
        assert all(0.0 <= r["hit_rate"] <= 1.0 for r in row.values())
        assert row["belady"]["tokens_saved"] >= max(row[p]["tokens_saved"] for p in ("lru", "lfu", "adaptive"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "lru,nope"], "unknown policies"),
        (["--capacities", "0.1,abc"], "comma-separated"),
        (["--capacities", "-1"], "positive"),
        (["--block-tokens", "100"], "block_tokens"),
    ],
)
def test_policies_reports_bad_input_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [TraceRequest(0.0, 600, 1, (1, 2))])
    result = run("policies", "--trace", str(trace), "--json", str(tmp_path / "o.json"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o.json").exists()


def test_policies_needs_exactly_one_source(tmp_path: Path) -> None:
    result = run("policies", "--json", str(tmp_path / "o.json"))
    assert result.exit_code == 2 and "exactly one" in result.output
