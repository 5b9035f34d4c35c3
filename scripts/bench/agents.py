"""`blatam bench agents`: agent runs through the gateway on the demo model, KV cache on vs off.

Starts the private Ray + Serve + gateway + API key of `service_cluster`, the
``redundancy`` and ``export`` applications (with a corpus for the tenant), then
runs the same workload twice, each time on a fresh LLM, ``bul`` and
``agents`` (their own SQLite files, so the second run adopts nothing the
first left):

- ``cache_on``: the LLM's KV cache as shipped (16-token blocks);
- ``cache_off``: blocks as long as the context: a prompt is always shorter
  than the context, so no prompt has a full block and none is stored or
  reused. Everything else is identical.

The workload (`agents_workload`) is ``--runs`` runs of the catalogue's
capabilities round robin with seeded inputs, submitted at once through
``POST /api/v1/agents/agents/{id}/capabilities/{name}/execute``; runs waiting
for an approval are approved (`agents_driver`). Greedy decoding, same seed.

Per run of the bench, over the model steps of every run (``GET /runs/{id}``,
steps of kind ``model``): ``token_hit_rate`` = cached / prompt tokens (each
step repeats its run's history, so all but the newest turn can come from
the cache), ``steps_per_min`` = model steps / wall time from the first
submission to the last run's end, and where the model time went (before the
first token: queue and prefill, which the cache saves; after it: decode,
which it does not).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.agents_driver import FINISHED, drive, seed_corpus
from scripts.bench.report import console, print_table, write_json
from scripts.bench.service_cluster import local_cluster, wait_routed

if TYPE_CHECKING:  # business_modules.agents takes a second to import: `blatam --help` must not pay for it
    from scripts.bench.agents_workload import RunSpec

GOALS = {"token_hit_rate_on": 0.7, "steps_per_min_ratio_min": 1.5}
LLM_APP = "bench-agents-llm"
MAX_MODEL_LEN = 4096
"""The LLM's context, as the llm app ships (and the agents' default ``context_tokens``); the agents are given it
explicitly, so their budgets plan for the context the bench's LLM has whatever ``AGENTS_CONTEXT_TOKENS`` says."""
CACHE_ON = {"enable_distributed": True, "block_size": 16}
"""As serve_config.yaml ships it: 16-token blocks, the default capacity of 32,768 tokens, which holds the histories
of the runs stepping at once (a 256 MiB pool, 16,384 of the demo model's tokens, evicted them: hit rate 0.68, not
0.75)."""
CACHE_OFF = {"enable_distributed": True, "block_size": MAX_MODEL_LEN}
"""Blocks as long as the context: a prompt leaves room for a new token, so it never fills one."""
LLM_ARGS = {"max_model_len": MAX_MODEL_LEN, "max_batch_size": 16, "max_tokens_limit": 1024, "num_cpus": 2}
"""As serve_config.yaml ships the llm app (both cores, its torch threads from them), on the demo model."""
SCOPES = "agents redundancy export bul"
RATE_LIMITS = {service: "1000000/minute" for service in SCOPES.split()}


def model_steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's model calls that the LLM answered (a call that failed carries no tokens)."""
    return [s for s in run.get("steps") or [] if s["kind"] == "model" and s["status"] in ("completed", "invalid")]


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def last_line(error: str | None) -> str | None:
    """An error's last line, the one that names the cause when it carries a traceback."""
    lines = (error or "").strip().splitlines()
    return lines[-1][:300] if lines else None


def summarise(runs: list[dict[str, Any]], wall_s: float, *, approvals: int = 0) -> dict[str, Any]:
    """The bench run's figures from every run as ``GET /runs/{id}`` shows it, and one line per run."""
    steps = [s["model"] for run in runs for s in model_steps(run)]
    later = [s["model"] for run in runs for s in model_steps(run)[1:]]
    prompt, cached = sum(m["prompt_tokens"] for m in steps), sum(m["cached_tokens"] for m in steps)
    ttfts = [m["ttft_ms"] for m in steps if m.get("ttft_ms") is not None]
    latencies = [s["latency_ms"] for run in runs for s in model_steps(run) if s.get("latency_ms") is not None]
    tools = [s for run in runs for s in run.get("steps") or [] if s["kind"] == "tool"]
    model_ms = sum(latencies)
    return {
        "runs": len(runs),
        "completed": sum(1 for r in runs if r["status"] == "completed"),
        "failed": [last_line(r.get("error")) for r in runs if r["status"] != "completed"],
        "unfinished": sum(1 for r in runs if r["status"] not in FINISHED),
        "approvals": approvals,
        "model_steps": len(steps),
        "tool_steps": len(tools),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": sum(m["completion_tokens"] for m in steps),
        "token_hit_rate": _share(cached, prompt),
        "later_step_hit_rate": _share(sum(m["cached_tokens"] for m in later), sum(m["prompt_tokens"] for m in later)),
        "step_ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
        "step_latency_p50_ms": statistics.median(latencies) if latencies else None,
        "model_time_s": model_ms / 1000,
        "ttft_share_of_model_time": _share(sum(ttfts), model_ms),
        "tool_time_s": sum(s["latency_ms"] or 0.0 for s in tools) / 1000,
        "wall_s": wall_s,
        "steps_per_min": len(steps) / wall_s * 60 if wall_s > 0 else 0.0,
        "per_run": [{"capability": f"{r['agent_id']}/{r['capability']}", "status": r["status"],
                     "model_steps": len(model_steps(r)), "tools": [s["tool"] for s in r.get("steps") or []
                                                                   if s["kind"] == "tool"],
                     "error": last_line(r.get("error"))} for r in runs],
    }


def ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """On/off ratios, the goals and whether each is met; ``same_work``: both runs made the same model steps with
    the same completion tokens (greedy decoding should make them, unless a near tie went another way)."""
    per_min = on["steps_per_min"] / off["steps_per_min"] if off["steps_per_min"] else None
    ttft_on, ttft_off = on["step_ttft_p50_ms"], off["step_ttft_p50_ms"]
    return {
        "steps_per_min_on_off": per_min,
        "step_ttft_p50_on_off": ttft_on / ttft_off if ttft_on is not None and ttft_off else None,
        "same_work": (on["model_steps"], on["completion_tokens"]) == (off["model_steps"], off["completion_tokens"]),
        "goals": GOALS,
        "meets": {
            "token_hit_rate_on": on["token_hit_rate"] >= GOALS["token_hit_rate_on"],
            "steps_per_min_ratio": per_min is not None and per_min >= GOALS["steps_per_min_ratio_min"],
        },
    }


def run_mode(base: str, api_key: str, data_dir: Path, *, mode: str, cache: dict[str, Any], specs: list[RunSpec],
             agents_settings: dict[str, Any], bul_settings: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Deploy the LLM with ``cache``, fresh bul and agents apps, run ``specs``, tear the three down; the summary."""
    import httpx
    from ray import serve

    from deployments.agents import build_agents
    from deployments.bul import build_bul
    from deployments.llm import build_llm

    serve.run(build_llm({**LLM_ARGS, "cache": cache}), name=LLM_APP, route_prefix=f"/{LLM_APP}")
    serve.run(build_bul({"database_url": f"sqlite:///{data_dir / f'bul-{mode}.db'}", "llm_app": LLM_APP,
                         "settings": bul_settings}), name="bul", route_prefix="/bul")
    serve.run(build_agents({"database_url": f"sqlite:///{data_dir / f'agents-{mode}.db'}", "llm_app": LLM_APP,
                            "settings": agents_settings}), name="agents", route_prefix="/agents")
    key = {"X-API-Key": api_key}
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            wait_routed(http, "agents", key)
            result = drive(http, key, specs, timeout_s=timeout_s)
        return summarise(result.runs, result.wall_s, approvals=result.approvals)
    finally:
        for name in ("agents", "bul", LLM_APP):
            serve.delete(name)


def deploy_tools_services(base: str, api_key: str) -> None:
    """The redundancy (with the tenant's corpus) and export apps, shared by both runs: they hold no LLM state."""
    import httpx
    from ray import serve

    from deployments.export import build_export
    from deployments.redundancy import build_redundancy

    serve.run(build_redundancy({}), name="redundancy", route_prefix="/redundancy")
    serve.run(build_export({}), name="export", route_prefix="/export")
    key = {"X-API-Key": api_key}
    with httpx.Client(base_url=base, timeout=120) as http:
        wait_routed(http, "redundancy", key)
        seed_corpus(http, key)


def print_results(results: dict[str, dict[str, Any]], summary: dict[str, Any], *, runs: int, seed: int) -> None:
    """The two runs, then each goal with its measured value and whether it is met."""
    print_table(
        f"Agents through the gateway, demo model, {runs} runs, seed {seed}",
        ["run", "runs done", "model steps", "hit rate", "later hit rate", "TTFT p50 ms", "step p50 ms",
         "TTFT share", "steps/min", "wall s"],
        [[mode, f"{r['completed']}/{r['runs']}", r["model_steps"], r["token_hit_rate"], r["later_step_hit_rate"],
          r["step_ttft_p50_ms"] if r["step_ttft_p50_ms"] is not None else "-",
          r["step_latency_p50_ms"] if r["step_latency_p50_ms"] is not None else "-",
          r["ttft_share_of_model_time"], r["steps_per_min"], r["wall_s"]] for mode, r in results.items()])
    per_min = summary["steps_per_min_on_off"]
    print_table("Goals", ["goal", "measured", "target", "met"], [
        ["token hit rate, cache on", results["cache_on"]["token_hit_rate"], f">= {GOALS['token_hit_rate_on']}",
         "yes" if summary["meets"]["token_hit_rate_on"] else "NO"],
        ["steps/min on/off", per_min if per_min is not None else "-", f">= {GOALS['steps_per_min_ratio_min']}",
         "yes" if summary["meets"]["steps_per_min_ratio"] else "NO"]])
    if not summary["same_work"]:
        console.print("[yellow]the two runs did not make the same model steps (a near tie decoded another way): "
                      "steps/min compares slightly different work[/yellow]")


@bench_app.command("agents")
def agents_bench(
    runs: Annotated[int, typer.Option(help="Agent runs per bench run (capabilities round robin).", min=1,
                                      max=200)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the runs' inputs and sampling (same for both).")] = 0,
    max_steps: Annotated[int | None, typer.Option(help="Model calls per run at most (default: the agents "
                                                       "service's default).", min=1)] = None,
    concurrency: Annotated[int | None, typer.Option(help="Runs of the tenant stepping at once (default: the "
                                                         "agents service's bound).", min=1)] = None,
    section_tokens: Annotated[int, typer.Option(help="Tokens per section of a BUL document a run writes.",
                                                min=1)] = 16,
    timeout_s: Annotated[float, typer.Option(help="Bound of one bench run.")] = 1800.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Agents through the gateway on the demo model: token hit rate and model steps/min; cache on vs off."""
    from business_modules.agents import constants as agents_constants
    from scripts.bench.agents_workload import workload

    max_steps = max_steps or agents_constants.DEFAULT_MAX_STEPS
    concurrency = concurrency or agents_constants.MAX_RUNNING_PER_TENANT
    specs = workload(runs, seed, max_steps=max_steps)
    agents_settings = {"context_tokens": MAX_MODEL_LEN, "max_running_per_tenant": concurrency,
                       "max_pending_per_tenant": max(agents_constants.MAX_PENDING_PER_TENANT, runs)}
    bul_settings = {"section_tokens_short": section_tokens, "section_tokens_medium": section_tokens,
                    "section_tokens_long": section_tokens, "outline_note_chars": 16}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="blatam-bench-agents-") as tmp:
        data_dir = Path(tmp)
        with console.status("starting Ray + Serve (gateway, redundancy, export)"):
            cluster = local_cluster(data_dir, scopes=SCOPES, rate_limits=RATE_LIMITS)
            base, api_key = cluster.__enter__()
        try:
            deploy_tools_services(base, api_key)
            for mode, cache in (("cache_on", CACHE_ON), ("cache_off", CACHE_OFF)):
                with console.status(f"{mode}: {runs} agent runs through the gateway"):
                    results[mode] = run_mode(base, api_key, data_dir, mode=mode, cache=cache, specs=specs,
                                             agents_settings=agents_settings, bul_settings=bul_settings,
                                             timeout_s=timeout_s)
                r = results[mode]
                console.print(f"{mode}: {r['completed']}/{runs} runs, {r['model_steps']} model steps in "
                              f"{r['wall_s']:.1f} s")
        finally:
            cluster.__exit__(None, None, None)
    summary = ratios(results["cache_on"], results["cache_off"])
    print_results(results, summary, runs=runs, seed=seed)
    write_json(json_out, {
        "benchmark": "agents",
        "service": "agents",
        "model": "demo",
        "runs": runs,
        "seed": seed,
        "max_steps": max_steps,
        "concurrency": concurrency,
        "workload": [f"{s.agent_id}/{s.capability}" for s in specs],
        "cpus": os.cpu_count(),
        **results,
        "settings": {"cache_on": CACHE_ON, "cache_off": CACHE_OFF, "llm": LLM_ARGS, "agents": agents_settings,
                     "bul": bul_settings},
        **summary,
    })
