"""`blatam bench report`: the page and plots from small documents of the benchmarks' real shapes, and the runner.

The documents are built with the benchmarks' own code wherever it exists
(policies' `report` over a real sweep, serve's `summarize` and `goals`,
services' `summarise` and `ratios`, peers' `summarise` and `ratios`, the
soak's `SoakResult.to_json`), so a change to a benchmark's JSON that the
report cannot read fails here, not in a 25-minute run.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from scripts.bench import bench_report
from scripts.bench.bench_report import FULL, QUICK, Part, Step, load_results, plan, run_parts
from scripts.bench.report_markdown import PartOutcome, RunInfo, render_page
from scripts.bench.report_plots import write_plots
from scripts.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ttft_docs() -> list[dict[str, Any]]:
    """Two lengths, every key `measure_ttft` returns (it needs a loaded model: written out here)."""
    def doc(n: int, uncached: float, cached: float, ideal: float) -> dict[str, Any]:
        return {"model": "blatam-demo", "prompt_tokens": n, "new_tokens": 64, "block_size": 64, "runs": 3,
                "cached_tokens": n - 64, "uncached_ms": uncached, "cached_ms": cached, "ideal_ms": ideal,
                "speedup": uncached / cached, "overhead": cached / ideal,
                "samples_ms": {"uncached": [uncached], "cached": [cached], "ideal": [ideal]}, "threads": 2,
                "dtype": "float32"}
    return [doc(256, 90.0, 20.0, 19.0), doc(2048, 667.0, 61.7, 60.5)]


def policies_doc() -> dict[str, Any]:
    from cache_actors.policies.simulator import prepare_trace, sweep
    from scripts.bench.policies import parse_policies, report
    from scripts.bench.traces import generate

    trace = prepare_trace(generate("multiturn", 60, seed=1))
    return report(trace, sweep(trace, [0.05, 0.25], parse_policies("lru,lfu,adaptive")), source="multiturn (seed 1)",
                  elapsed_s=0.1)


def serve_doc() -> dict[str, Any]:
    from scripts.bench.serve import QUICK as SERVE_QUICK
    from scripts.bench.serve import ServeBenchConfig, goals
    from scripts.bench.serve_workloads import RequestRecord, summarize

    config = ServeBenchConfig(**SERVE_QUICK)
    runs = []
    for routing, cached, ttft in (("affinity", 150, 0.1), ("pow2", 60, 0.3)):
        records = [RequestRecord(sent_s=i * 0.5, first_token_s=i * 0.5 + ttft, done_s=i * 0.5 + 0.4, prompt_tokens=200,
                                 completion_tokens=8, cached_tokens=cached, replica=f"r{i % 2}", tenant_id=f"t{i % 4}")
                   for i in range(8)]
        runs.append({"routing": routing, **summarize(records, replicas=["r0", "r1"]),
                     "own_shard_hit_rate": cached / 250, "hit_tokens_by_source": {"device": cached * 8},
                     "router_decisions": None, "replica_stats": [], "replicas_seen_in_warmup": ["r0", "r1"],
                     "deploy_s": 5.0, "requests_detail": []})
    batching = [{"concurrency": n, "output_tokens_per_s": rate, "requests": n, "output_tokens": 16 * n,
                 "ttft_p50_ms": 50.0, "latency_p50_ms": 300.0, "mean_batch_size": float(n),
                 "one_at_a_time_output_tokens_per_s": 70.0, "ratio_to_one_at_a_time": rate / 70.0}
                for n, rate in ((1, 70.0), (4, 170.0))]
    return {"benchmark": "serve", "config": {**asdict(config), "batching": list(config.batching)},
            "shard_capacity_tokens": 384, "distinct_system_prompt_tokens": 700, "cpus": 2, "runs": runs,
            "batching": batching, "goals": goals(runs, batching)}


def services_doc() -> dict[str, Any]:
    from scripts.bench.services import ratios, summarise

    def statuses(cached: int, ttft: float) -> list[dict[str, Any]]:
        steps = [{"step": "outline", "prompt_tokens": 300, "cached_tokens": cached, "ttft_ms": ttft},
                 {"step": "section", "prompt_tokens": 400, "cached_tokens": cached, "ttft_ms": ttft}]
        return [{"status": "completed", "sections": steps}] * 4

    on, off = summarise(statuses(250, 200.0), 40.0), summarise(statuses(0, 900.0), 70.0)
    return {"benchmark": "services", "service": "bul", "model": "demo", "jobs": 4, "seed": 0, "section_tokens": 16,
            "outline_note_chars": 16, "concurrency": 4, "cpus": 2, "cache_on": on, "cache_off": off,
            "cache_settings": {}, **ratios(on, off)}


def peers_doc() -> dict[str, Any]:
    from scripts.bench.peers import Samples, Workload, ratios, summarise
    from scripts.bench.peers_client import Server

    def side(name: str, scale: float) -> dict[str, Any]:
        samples = Samples.empty()
        for measure, value in (("ttft_uncached", 700.0), ("ttft_cached", 60.0), ("tok_s_1", 100.0), ("tok_s_16", 600.0)):
            samples.values[measure].extend([value * scale] * 5)
        return summarise(samples, Server(name, f"http://{name}/v1", "demo"))

    ours, peer = side("ours", 1.2), side("vLLM-CPU", 1.0)
    return {"benchmark": "peers", "peer_name": "vLLM-CPU", "model": "demo", "seed": 1, "rounds": 5,
            "workload": asdict(Workload(2049, 1984, 64, 64, 4, 16)), "cpus": 2, "ours": ours, "peer": peer,
            "ratio": ratios(ours, peer)}


def soak_doc() -> dict[str, Any]:
    from scripts.bench.proc_stats import ProcSample
    from scripts.bench.soak import Percentiles, ProcessReport, SoakConfig, SoakResult, Window

    windows = [Window(start_s=t, end_s=t + 10, requests=20, errors=0, latency=Percentiles.of([0.1, 0.2, 0.3 + t / 100]),
                      by_kind={"llm_chat": Percentiles.of([0.2])}, rss_bytes={"gateway": 100 << 20}, fds={"gateway": 30},
                      shm_maps={"gateway": 0}, cache=None) for t in (0.0, 10.0, 20.0)]
    drain = Window(start_s=30.0, end_s=33.0, requests=1, errors=0, latency=Percentiles.of([9.0]), by_kind={},
                   rss_bytes={}, fds={}, shm_maps={}, cache=None)  # `run_soak`'s last sample: after the load drained
    windows.append(drain)
    sample = ProcSample(rss_bytes=100 << 20, fds=30, shm_fds=0, shm_maps=0, shm_objects=0, shm_mapped_bytes=0)
    config = SoakConfig(base_url="http://x", duration_s=30, rate_per_s=2)
    return SoakResult(config={**asdict(config), "warmup_s": config.warmup}, sent=60, errors=0, error_examples=[],
                      max_start_lag_s=0.01, wall_s=33.0, latency=Percentiles.of([0.1, 0.2, 0.5]),
                      by_kind={"llm_chat": Percentiles.of([0.2]), "redundancy_analyze": Percentiles.of([0.1])},
                      windows=windows, processes=[ProcessReport("gateway", 1, sample, sample, 100 << 20, 104 << 20,
                                                                104 << 20)],
                      replaced=[], dev_shm_before=3, dev_shm_after=3).to_json()


def faults_doc() -> dict[str, Any]:
    """tests/faults/test_faults.py's RESULTS: fault -> the dict `test_fault_under_load` records."""
    def row(refused: int, recovery: float) -> dict[str, Any]:
        return {"sent": 48, "ok": 48 - refused, "refused": refused, "failed": 0, "recovery_s": recovery,
                "healthy_after_load_s": 0.4, "acknowledged_writes": 9, "writes_missing": 0,
                "by_kind": {"llm_chat:ok": 10}}
    return {"kv_shard_killed": row(0, 0.0), "llm_replica_killed": row(5, 7.5)}


def all_results() -> dict[str, Any]:
    coordinator = {"index": [{"blocks": b, "applied_events": b, "shards": s, "events_per_s": 1e6, "memory_mb": 2.0,
                              "bytes_per_block": 200.0, **{k: 2.0 + b / 1e5 for k in (
                                  "where_us", "route_us", "locate_us", "where_zipf_us", "route_zipf_us",
                                  "locate_zipf_us")}} for b in (10_000, 100_000) for s in (1, 8)],
                   "lookup_growth": {"where_us": 1.4, "route_us": 1.5, "locate_us": 1.6},
                   "lookup_growth_zipf": {"where_zipf_us": 1.3, "route_zipf_us": 1.2, "locate_zipf_us": 1.1},
                   "zipf_exponent": 1.0, "timing": "best of 5 passes", "batch_events": 256}
    dataplane = {"sizes": [{"transport": "shared_memory", "blocks": n, "mb": float(n), "get_mb_s": 2000.0,
                            "put_mb_s": 1500.0, "memcpy_mb_s": 6000.0, "ratio": 0.25, "get_ms": 8.0, "put_ms": 10.0,
                            "memcpy_ms": 3.0} for n in (1, 16)], "repeats": 3, "threads": 1, "cpus": 2}
    prefill = {"long_tokens": 768, "chunk_tokens": 256, "decoders": 4, "trials": 1, "budgets": {"whole": 832,
               "chunked": 256}, "settings": {"whole": {"max_gap_ms": 1000.0, "p99_gap_ms": 900.0, "ttft_ms": 1000.0},
                                             "chunked": {"max_gap_ms": 280.0, "p99_gap_ms": 250.0, "ttft_ms": 1400.0}},
               "samples": {}, "stall_ratio": 0.28, "ttft_ratio": 1.4}
    return {"ttft": ttft_docs(), "policies": policies_doc(), "dataplane": dataplane, "coordinator": coordinator,
            "serve": serve_doc(), "prefill": prefill, "services": services_doc(), "peers": peers_doc(),
            "soak": soak_doc(), "faults": faults_doc()}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_page_and_plots_from_every_benchmark(tmp_path: Path) -> None:
    results = all_results()
    written, errors = write_plots(results, tmp_path / "docs" / "benchmarks")
    assert errors == {}
    assert set(written) == {"ttft", "policies", "throughput", "soak", "faults"}
    for path in written.values():
        assert path.stat().st_size > 0
        assert png_size(path) == (800, 500)
    info = RunInfo(date="2026-12-04 12:00 UTC", cpu_model="Test CPU", cpus=2, load_start=(1.0, 0.5, 0.2),
                   load_end=(2.0, 1.0, 0.5),
                   git_revision="abc1234", python="3.11", torch="2.13.0", mode="quick", command="blatam bench report",
                   total_s=75.0)
    outcomes = [PartOutcome(name, "ok", 12.0, steps=[f"blatam bench {name}"]) for name in results]
    relative = {name: f"docs/benchmarks/{path.name}" for name, path in written.items()}
    page = render_page(info, outcomes, results, relative)
    (tmp_path / "BENCHMARKS.md").write_text(page)

    assert "Test CPU, 2 logical CPUs" in page and "`abc1234`" in page and "1 min 15 s" in page
    for heading in ("Time to first token", "Eviction policies", "KV data plane", "Coordinator index", "Serving",
                    "Chunked prefill", "Services through the gateway", "Against a peer server", "Soak", "Faults"):
        assert f"## {heading}" in page
    for row in ("| 2,048 | 1,984 | 667 | 61.7 | 60.5 | **10.81x** | 1.02x |",
                "| **affinity / pow2** |", "| 4 | 170 | 4 | 50 | **2.43x** |",
                "| **chunked / whole** | **0.28x** | **0.28x** | **1.40x** |",
                "| **on / off** |", "| **growth 100,000 / 10,000** |",
                "| output tok/s, 16 concurrent (64 new) | 720 | 600 | **1.20x** |",
                "| llm_replica_killed | 48 | 43 | 5 | 0 | 90% | 7.5 | 0.4 | 9/9 |"):
        assert row in page, row
    assert "| capacity | blocks | lru | lfu | adaptive | belady | adaptive / LRU | best online / Belady |" in page
    assert "| latency | first 1 sample | last 1 sample | last / first |" in page
    assert "| p99 ms | 300 | 500 | **1.67x** |" in page  # the drain's 9-s straggler is left out
    for name in written:
        assert f"](docs/benchmarks/{name}.png)" in page
    assert page.count("(docs/benchmarks/throughput.png)") == 1  # serve and peers share it


def test_a_failed_part_shows_its_last_lines_and_the_rest_runs(tmp_path: Path) -> None:
    ok = tmp_path / "dataplane.json"
    writes = json.dumps(all_results()["dataplane"])
    parts = [Part("prefill", (Step("crashes", ("-c", "print('building'); raise SystemExit('boom: no shard')"),
                                   tmp_path / "prefill.json"),)),
             Part("dataplane", (Step("writes", ("-c", f"open({str(ok)!r}, 'w').write({writes!r})"), ok),)),
             Part("soak", (Step("soak", ("-c", "pass"), tmp_path / "soak.json"),))]
    outcomes = run_parts(parts, tmp_path, skip=["soak"], timeout_s=60, reuse=False)
    assert [(o.name, o.status) for o in outcomes] == [("prefill", "failed"), ("dataplane", "ok"), ("soak", "skipped")]
    assert "boom: no shard" in outcomes[0].detail and "exit status 1" in outcomes[0].detail
    results = load_results(parts)
    assert results["prefill"] is None and results["dataplane"]["repeats"] == 3
    info = RunInfo("d", "cpu", 2, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "rev", "3.11", "2", "full", "blatam bench report",
                   1.0)
    page = render_page(info, outcomes, results, {})
    assert "> **Failed** after" in page and "boom: no shard" in page and "It left no results." in page
    assert "| **0.25x** |" in page
    assert "## Not run\n\n- soak: --skip" in page


def test_the_failure_shown_is_pytests_own_lines(tmp_path: Path) -> None:
    log = tmp_path / "faults.log"
    log.write_text("\n".join(["collected 6 items", "E       AssertionError: export_job #12: ReadTimeout",
                              *[f"INFO teardown {i}" for i in range(40)],
                              "FAILED tests/faults/test_faults.py::test_x - AssertionError",
                              "\x1b[33m(raylet)\x1b[0m noise", "1 failed, 1 passed in 300s"]))
    assert bench_report.tail(log) == ("E       AssertionError: export_job #12: ReadTimeout\n"
                                      "FAILED tests/faults/test_faults.py::test_x - AssertionError\n"
                                      "1 failed, 1 passed in 300s")
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert bench_report.tail(log, 3) == "line 97\nline 98\nline 99"


def test_reuse_keeps_results_of_an_earlier_run(tmp_path: Path) -> None:
    done = tmp_path / "a.json"
    done.write_text("{}")
    parts = [Part("ttft", (Step("done", ("-c", "raise SystemExit(1)"), done),
                           Step("missing", ("-c", f"open({str(tmp_path / 'b.json')!r}, 'w').write('{{}}')"),
                                tmp_path / "b.json")))]
    (outcome,) = run_parts(parts, tmp_path, skip=[], timeout_s=60, reuse=True)
    assert (outcome.status, outcome.reused) == ("ok", 1)
    info = RunInfo("d", "cpu", 2, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), "rev", "3.11", "2", "full", "blatam bench report",
                   1.0)
    assert "| ok (1 of 2 from an earlier run) |" in render_page(info, [outcome], {"ttft": None}, {})


def test_a_step_that_exceeds_its_timeout_is_stopped(tmp_path: Path) -> None:
    step = Step("sleeps", ("-c", "import time; print('waiting', flush=True); time.sleep(60)"), tmp_path / "x.json")
    code, why = bench_report.run_step(step, tmp_path / "x.log", timeout_s=2)
    assert code == 124 and "timed out after 2 s" in why and "waiting" in why


def test_plan_sizes_and_commands(tmp_path: Path) -> None:
    quick, full = plan(tmp_path, QUICK), plan(tmp_path, FULL, peer_url="http://127.0.0.1:18081/v1")
    assert [p.name for p in quick] == [n for n in bench_report.PARTS if n != "peers"]
    assert [p.name for p in full] == list(bench_report.PARTS)
    ttft = next(p for p in full if p.name == "ttft")
    assert [s.output.name for s in ttft.steps] == [f"ttft-{n}.json" for n in FULL.ttft_lengths]
    faults = next(p for p in quick if p.name == "faults").steps[0]
    assert faults.env == {"BLATAM_FAULTS_JSON": str(tmp_path / "faults.json")}
    assert faults.shown(tmp_path) == ("BLATAM_FAULTS_JSON=<work>/faults.json pytest -q -n 0 -p no:cacheprovider "
                                      "tests/faults/test_faults.py -k 'kv_shard_killed or llm_replica_killed'")
    soak = next(p for p in quick if p.name == "soak").steps[0]
    assert soak.env["BLATAM_SOAK_S"] == str(QUICK.soak_s)
    assert ttft.steps[0].shown(tmp_path) == "blatam bench ttft --prompt-tokens 256 --runs 5 --json <work>/ttft-256.json"
    for part in full:
        for step in part.steps:
            assert step.argv[:2] in (("-m", "scripts.cli"), ("-m", "pytest"))
            test_files = [arg for arg in step.argv if arg.endswith(".py")]
            assert (bench_report.ROOT / test_files[0]).exists() if step.argv[1] == "pytest" else True


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["bench", "report", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in ("--out", "--plots", "--work", "--quick", "--skip", "--peer-url", "--peer-name", "--timeout",
                   "--reuse"):
        assert option in result.output, option


def test_unknown_part_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "report", "--skip", "nope", "--work", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown parts" in result.output


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/cpuinfo")
def test_run_info_reads_the_machine() -> None:
    from scripts.bench.report_host import run_info

    info = run_info("quick", "blatam bench report --quick", 3.0, (1.0, 2.0, 3.0), bench_report.ROOT)
    assert info.cpus >= 1 and info.git_revision and info.cpu_model
