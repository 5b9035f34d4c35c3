"""`blatam bench services`: BUL jobs through the gateway on the demo model, KV cache on vs off.

Starts a private local Ray + Serve (2 CPUs, free port, embedded SQLite in a
temporary folder) with the ``gateway``, ``bul`` and an LLM application on the
built-in demo model, creates an API key, then runs the same workload twice:

- ``cache_on``: the LLM's KV cache with 16-token blocks;
- ``cache_off``: the same LLM with blocks larger than its context
  (``block_size`` > ``max_model_len``): only full blocks are cached, so no
  prompt ever stores or reuses one. Everything else is identical.

The workload is ``--jobs`` BUL jobs of mixed document types (round robin over
every type) with seeded inputs, submitted at once through
``POST /api/v1/bul/documents/generate`` and polled to the end. Greedy
decoding, same seed: both runs generate the same text.

Per run: ``token_hit_rate`` = cached / prompt tokens over every LLM call of
the jobs (outlines and sections), ``section_ttft_p50_ms`` (the LLM's time to
first token of section calls, as it reports it), ``jobs_per_min`` (jobs /
wall time from the first submission to the last job's end). Ratios on/off
are measured in this run, on this machine.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json
from scripts.bench.service_cluster import local_cluster, wait_routed

GOALS = {"token_hit_rate_on": 0.6, "ttft_ratio_max": 0.3, "jobs_per_min_ratio_min": 1.3}
LLM_APP = "bench-llm"
MAX_MODEL_LEN = 2048
CACHE_ON = {"enable_distributed": True, "block_size": 16, "max_memory_mb": 256}
CACHE_OFF = {"enable_distributed": True, "block_size": 4096, "max_memory_mb": 256}
"""Blocks larger than the context: no prompt has a full block, so nothing is stored or reused."""

_COMPANIES = ["Northwind Bakery", "Harbor Logistics", "Aurora Dental", "Pine & Oak Studio", "Bluefin Analytics",
              "Copper Kettle Cafe", "Summit Outdoor Gear", "Lumen Solar"]
_AREAS = ["food", "logistics", "health", "design", "software", "hospitality", "retail", "energy"]


def workload(jobs: int, seed: int) -> list[dict[str, Any]]:
    """``jobs`` request bodies of mixed document types (round robin), inputs drawn from ``seed``."""
    from business_modules.bul import DOCUMENT_TYPES

    rng = random.Random(seed)
    bodies = []
    for i in range(jobs):
        spec = DOCUMENT_TYPES[i % len(DOCUMENT_TYPES)]
        company = rng.choice(_COMPANIES)
        figures = [{"label": f"Figure {k + 1}", "value": f"${rng.randint(10, 999)},{rng.randint(100, 999)}"}
                   for k in range(rng.randint(1, 3))]
        bodies.append({"query": f"{spec.title} for {company}, request {i}", "document_type": spec.name,
                       "business_area": rng.choice(_AREAS), "length": "short",
                       "inputs": {"company_name": company, "figures": figures}})
    return bodies


def summarise(statuses: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The run's figures from the final task statuses (``GET /tasks/{id}/status``)."""
    steps = [e for s in statuses for e in s["sections"] if e.get("prompt_tokens") is not None]
    sections = [e for e in steps if e["step"] == "section"]
    prompt = sum(e["prompt_tokens"] for e in steps)
    cached = sum(e["cached_tokens"] for e in steps)
    section_prompt = sum(e["prompt_tokens"] for e in sections)
    ttfts = [e["ttft_ms"] for e in sections if e.get("ttft_ms") is not None]
    completed = sum(1 for s in statuses if s["status"] == "completed")
    return {
        "jobs": len(statuses),
        "completed": completed,
        "failed": [s.get("error") for s in statuses if s["status"] != "completed"],
        "llm_calls": len(steps),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "token_hit_rate": cached / prompt if prompt else 0.0,
        "section_token_hit_rate": sum(e["cached_tokens"] for e in sections) / section_prompt if section_prompt else 0.0,
        "section_ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
        "wall_s": wall_s,
        "jobs_per_min": completed / wall_s * 60 if wall_s > 0 else 0.0,
    }


def ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    ttft_on, ttft_off = on["section_ttft_p50_ms"], off["section_ttft_p50_ms"]
    ttft = ttft_on / ttft_off if ttft_on is not None and ttft_off else None
    jobs = on["jobs_per_min"] / off["jobs_per_min"] if off["jobs_per_min"] else None
    return {
        "section_ttft_p50_on_off": ttft,
        "jobs_per_min_on_off": jobs,
        "goals": GOALS,
        "meets": {
            "token_hit_rate_on": on["token_hit_rate"] >= GOALS["token_hit_rate_on"],
            "ttft_ratio": ttft is not None and ttft <= GOALS["ttft_ratio_max"],
            "jobs_per_min_ratio": jobs is not None and jobs >= GOALS["jobs_per_min_ratio_min"],
        },
    }


def run_mode(base: str, api_key: str, data_dir: Path, *, cache: dict[str, Any], bodies: list[dict[str, Any]],
             bul_settings: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Deploy the LLM with ``cache`` and a fresh bul app, run ``bodies``, tear both down; the run's summary."""
    import httpx
    from ray import serve

    from deployments.bul import build_bul
    from deployments.llm import build_llm

    serve.run(build_llm({"max_model_len": MAX_MODEL_LEN, "max_batch_size": 16, "max_tokens_limit": 512,
                         "cache": cache}), name=LLM_APP, route_prefix=f"/{LLM_APP}")
    db_file = data_dir / f"bul-{cache['block_size']}.db"
    serve.run(build_bul({"database_url": f"sqlite:///{db_file}", "llm_app": LLM_APP, "settings": bul_settings}),
              name="bul", route_prefix="/bul")
    key = {"X-API-Key": api_key}
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            wait_routed(http, "bul", key)
            started = time.perf_counter()
            ids = []
            for body in bodies:
                response = http.post("/api/v1/bul/documents/generate", json=body, headers=key)
                if response.status_code != 202:
                    raise RuntimeError(f"submitting a job answered {response.status_code}: {response.text[:300]}")
                ids.append(response.json()["task_id"])
            finished: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + timeout_s
            while len(finished) < len(ids) and time.monotonic() < deadline:
                for task_id in ids:
                    if task_id not in finished:
                        status = http.get(f"/api/v1/bul/tasks/{task_id}/status", headers=key).json()
                        if status["status"] in ("completed", "failed", "cancelled"):
                            finished[task_id] = status
                time.sleep(0.25)
            wall = time.perf_counter() - started
            missing = [i for i in ids if i not in finished]
            for task_id in missing:  # timed out: counted as not completed
                finished[task_id] = http.get(f"/api/v1/bul/tasks/{task_id}/status", headers=key).json()
        return summarise([finished[i] for i in ids], wall)
    finally:
        serve.delete("bul")
        serve.delete(LLM_APP)


@bench_app.command("services")
def services_bench(
    jobs: Annotated[int, typer.Option(help="BUL jobs per run (mixed document types).", min=1)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the workload's inputs (same for both runs).")] = 0,
    section_tokens: Annotated[int, typer.Option(help="Tokens per section (length short).", min=1)] = 16,
    outline_note_chars: Annotated[int, typer.Option(help="maxLength of an outline note.", min=4)] = 16,
    concurrency: Annotated[int, typer.Option(help="Jobs generating at once (per tenant).", min=1)] = 4,
    timeout_s: Annotated[float, typer.Option(help="Bound of one run.")] = 1800.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """BUL through the gateway on the demo model: token hit rate, section TTFT p50, jobs/min; cache on vs off."""
    bodies = workload(jobs, seed)
    bul_settings = {"section_tokens_short": section_tokens, "outline_note_chars": outline_note_chars,
                    "max_running_per_tenant": concurrency, "max_pending_per_tenant": max(32, jobs)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="blatam-bench-services-") as tmp:
        data_dir = Path(tmp)
        with console.status("starting Ray + Serve (gateway)"):
            cluster = local_cluster(data_dir, scopes="bul", rate_limits={"bul": "1000000/minute"})
            base, api_key = cluster.__enter__()
        try:
            for mode, cache in (("cache_on", CACHE_ON), ("cache_off", CACHE_OFF)):
                with console.status(f"{mode}: {jobs} BUL jobs through the gateway"):
                    results[mode] = run_mode(base, api_key, data_dir, cache=cache, bodies=bodies,
                                             bul_settings=bul_settings, timeout_s=timeout_s)
                console.print(f"{mode}: {results[mode]['completed']}/{jobs} jobs in {results[mode]['wall_s']:.1f} s")
        finally:
            cluster.__exit__(None, None, None)
    on, off = results["cache_on"], results["cache_off"]
    summary = ratios(on, off)
    print_table(
        f"BUL through the gateway, demo model, {jobs} jobs, seed {seed}",
        ["run", "jobs done", "token hit rate", "section hit rate", "section TTFT p50 ms", "jobs/min", "wall s"],
        [[mode, f"{r['completed']}/{r['jobs']}", r["token_hit_rate"], r["section_token_hit_rate"],
          r["section_ttft_p50_ms"] if r["section_ttft_p50_ms"] is not None else "-", r["jobs_per_min"], r["wall_s"]]
         for mode, r in results.items()],
    )
    ttft, per_min = summary["section_ttft_p50_on_off"], summary["jobs_per_min_on_off"]
    console.print(
        f"token hit rate on {on['token_hit_rate']:.3f} (goal >= 0.6: "
        f"{'met' if summary['meets']['token_hit_rate_on'] else 'NOT met'}); "
        f"section TTFT p50 on/off {ttft if ttft is None else round(ttft, 3)} (goal <= 0.3: "
        f"{'met' if summary['meets']['ttft_ratio'] else 'NOT met'}); "
        f"jobs/min on/off {per_min if per_min is None else round(per_min, 3)} (goal >= 1.3: "
        f"{'met' if summary['meets']['jobs_per_min_ratio'] else 'NOT met'})")
    write_json(json_out, {
        "benchmark": "services",
        "service": "bul",
        "model": "demo",
        "jobs": jobs,
        "seed": seed,
        "section_tokens": section_tokens,
        "outline_note_chars": outline_note_chars,
        "concurrency": concurrency,
        "cpus": os.cpu_count(),
        "cache_on": on,
        "cache_off": off,
        "cache_settings": {"cache_on": CACHE_ON, "cache_off": CACHE_OFF, "max_model_len": MAX_MODEL_LEN},
        **summary,
    })
