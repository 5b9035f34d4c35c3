"""`blatam bench serve`: the `llm` deployment under a closed loop of clients, cache-aware vs pow2 routing.

Starts a private local Ray + Serve, deploys `deployments.llm.build_llm` with
``--replicas`` replicas (one KV shard each: ``cpu_shards`` = replicas, a
replica's local rank picks its shard) and drives ``LLMServer.generate_stream``
through a `DeploymentHandle` from this process, so each request is routed by
this process's router exactly as for a service calling the LLM. TTFT is
measured here, to the first streamed token; the done event adds the server's
TTFT, the prompt's cached tokens and the replica that served it.

Per routing (``--routing both`` runs affinity then pow2 in the same run): a
fresh deployment on empty caches (the app is deleted and the KV shard and
coordinator actors killed in between), unmeasured warm-up requests until
every replica has served one, then the workload (`serve_workloads`). Reported:
requests/s, output tokens/s, TTFT p50/p95/p99, token hit rate (cached prompt
tokens / prompt tokens as the done events report them, so blocks the shard
fetched from a peer shard count), the own-shard hit rate (only blocks the
replica's own shard or its replica-local tier already held, from the replicas' ``tier_blocks``), and
load = requests per replica, max over mean (and the time-weighted in-flight
count likewise). The JSON also has each request, each tenant's placement and
the cache-aware router's decision counts.

Each shard's capacity is ``--cache-fraction`` of the distinct system-prompt
tokens of the workload, so with 2 replicas one shard can hold about half of
the tenants' prefixes: routing by prefix can keep every tenant cached, random
routing cannot.

Batching: one replica, unique short prompts, ``--batching`` levels of
closed-loop clients; output tokens/s of each level and its ratio to one
request at a time (level 1). The default shape (64 prompt tokens, 128 output
tokens) is decode-heavy on purpose: on a CPU core a unique prompt's prefill
is compute-bound work that batching cannot share, so longer prompts measure
prefill more than batching (measured here with 96/64: ~3x instead of ~4x at
16 clients, while one decode step of 16 rows cost 2.6x a step of one).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json
from scripts.bench.serve_driver import deploy, drive, local_serve, replica_stats, router_decisions, teardown, warm_up
from scripts.bench.serve_workloads import WORKLOADS, RequestRecord, Session, make_workload, summarize, unique_prompts

if TYPE_CHECKING:
    from rich.progress import Progress

ROUTINGS = ("affinity", "pow2")
GOALS = {"hit_rate_ratio_min": 2.0, "ttft_p50_ratio_max": 0.5, "load_max_over_mean_max": 1.3, "batching_ratio_min": 4.0}


@dataclass(frozen=True, slots=True)
class ServeBenchConfig:
    """Everything one run of the benchmark depends on (written to the JSON)."""

    replicas: int = 2
    # 2 clients per replica: measured at the knee (8 clients served no more requests/s, only queued longer).
    concurrency: int = 4
    workload: str = "multitenant"
    requests: int = 128
    tenants: int = 8
    prefix_tokens: int = 768
    question_tokens: int = 24
    turns: int = 4
    zipf: float = 0.0
    max_tokens: int = 16
    cache_fraction: float = 0.55
    block_size: int = 16
    max_model_len: int = 1536
    num_threads: int = 1
    seed: int = 0
    model: str | None = None
    batching: tuple[int, ...] = (1, 4, 16)
    batch_prompt_tokens: int = 64
    batch_max_tokens: int = 128
    batch_rounds: int = 2
    batch_threads: int = 1
    router: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; choose one of {', '.join(WORKLOADS)}")
        if min(self.replicas, self.concurrency, self.requests, self.max_tokens, self.num_threads, self.batch_rounds) < 1:
            raise ValueError("replicas, concurrency, requests, max_tokens, num_threads and batch_rounds must be >= 1")
        if not 0 < self.cache_fraction:
            raise ValueError(f"cache_fraction must be > 0, got {self.cache_fraction}")
        if any(level < 1 for level in self.batching):
            raise ValueError(f"batching levels must be >= 1, got {self.batching}")


QUICK = dict(requests=16, tenants=4, prefix_tokens=192, concurrency=4, max_tokens=8, max_model_len=512,
             batching=(1, 4), batch_prompt_tokens=48, batch_max_tokens=16, batch_rounds=1)


def llm_args(config: ServeBenchConfig, *, routing: str, replicas: int, capacity_tokens: int, max_batch_size: int = 16,
             num_threads: int | None = None) -> dict[str, Any]:
    """`build_llm` args of one deployment."""
    return {
        "num_replicas": replicas,
        "routing": routing,
        "router": dict(config.router),
        "model_path": config.model,
        "num_threads": num_threads or config.num_threads,
        "max_model_len": config.max_model_len,
        "max_batch_size": max_batch_size,
        "max_tokens_limit": max(config.max_tokens, config.batch_max_tokens),
        "cache": {"enable_distributed": True, "cpu_shards": replicas, "block_size": config.block_size,
                  "max_tokens": capacity_tokens},
    }


# --- phases ----------------------------------------------------------------------------------------------


def request_row(record: RequestRecord) -> dict[str, Any]:
    """One request in the JSON, times relative to nothing but itself (ms)."""
    return {"tenant": record.tenant_id, "replica": record.replica, "prompt_tokens": record.prompt_tokens,
            "cached_tokens": record.cached_tokens, "completion_tokens": record.completion_tokens,
            "ttft_ms": round(record.ttft_ms, 2), "server_ttft_ms": record.server_ttft_ms,
            "latency_ms": round((record.done_s - record.sent_s) * 1000.0, 2)}


def _tier_tokens(before: list[dict[str, Any]], after: list[dict[str, Any]], block_size: int) -> dict[str, int]:
    """Prompt tokens reused per source (the replica's own tier "replica", its shard "device", "peer", ...)
    between two `replica_stats`."""
    start = {s["shard"]: s.get("tier_blocks") or {} for s in before}
    out: collections.Counter[str] = collections.Counter()
    for stats in after:
        for tier, blocks in (stats.get("tier_blocks") or {}).items():
            out[tier] += (blocks - start.get(stats["shard"], {}).get(tier, 0)) * block_size
    return dict(out)


def run_routing(config: ServeBenchConfig, routing: str, sessions: list[Session], capacity_tokens: int,
                progress: Progress | None = None) -> dict[str, Any]:
    """One routing on a fresh deployment with empty caches: summary, replica stats, router decisions."""
    task = progress.add_task(f"{routing}: deploying", total=sum(len(s.turns) for s in sessions)) if progress else None
    started = time.perf_counter()
    handle = deploy(llm_args(config, routing=routing, replicas=config.replicas, capacity_tokens=capacity_tokens),
                    f"llm-bench-{routing}")
    try:
        deploy_s = time.perf_counter() - started
        if progress is not None:
            progress.update(task, description=f"{routing}: warm-up")
        replicas = asyncio.run(warm_up(handle, config.replicas, seed=config.seed))
        before, decisions_before = replica_stats(handle), router_decisions(handle)
        if progress is not None:
            progress.update(task, description=f"{routing}: {config.workload}")
        advance = (lambda: progress.advance(task)) if progress is not None else (lambda: None)
        records = asyncio.run(drive(handle, sessions, concurrency=config.concurrency, max_tokens=config.max_tokens,
                                    on_done=advance))
        after, decisions_after = replica_stats(handle), router_decisions(handle)
    finally:
        teardown(handle)
    decisions = None if decisions_after is None else {
        k: v - (decisions_before or {}).get(k, 0) for k, v in decisions_after.items()}
    summary = summarize(records, replicas=replicas)
    tiers = _tier_tokens(before, after, config.block_size)
    return {"routing": routing, **summary,
            "own_shard_hit_rate": (tiers.get("replica", 0) + tiers.get("device", 0)) / summary["prompt_tokens"]
            if summary["prompt_tokens"] else 0.0,
            "hit_tokens_by_source": tiers, "router_decisions": decisions, "replica_stats": after,
            "replicas_seen_in_warmup": replicas, "deploy_s": deploy_s,
            "requests_detail": [request_row(r) for r in records]}


def run_batching(config: ServeBenchConfig, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Output tokens/s of one replica at each level of closed-loop clients, and the ratio to level 1."""
    levels = sorted(set(config.batching))
    if not levels:
        return []
    total = sum(level * config.batch_rounds for level in levels)
    task = progress.add_task("batching: deploying", total=total) if progress else None
    capacity = max(4096, 2 * max(levels) * (config.batch_prompt_tokens + config.batch_max_tokens))
    handle = deploy(llm_args(config, routing="pow2", replicas=1, capacity_tokens=capacity, max_batch_size=max(16, *levels),
                             num_threads=config.batch_threads),
                    "llm-bench-batching")
    rows = []
    try:
        asyncio.run(warm_up(handle, 1, seed=config.seed))
        for level in levels:
            if progress is not None:
                progress.update(task, description=f"batching: {level} clients")
            sessions = unique_prompts(level * config.batch_rounds, prompt_tokens=config.batch_prompt_tokens,
                                      seed=config.seed + level)
            (before,) = replica_stats(handle)
            advance = (lambda: progress.advance(task)) if progress is not None else (lambda: None)
            records = asyncio.run(drive(handle, sessions, concurrency=level, max_tokens=config.batch_max_tokens,
                                        on_done=advance))
            (after,) = replica_stats(handle)
            summary = summarize(records, replicas=[r.replica for r in records if r.replica])
            steps = (after["decode_steps"] or 0) - (before["decode_steps"] or 0)
            rows_decoded = (after["mean_batch_size"] or 0) * (after["decode_steps"] or 0) - \
                (before["mean_batch_size"] or 0) * (before["decode_steps"] or 0)
            rows.append({"concurrency": level, "output_tokens_per_s": summary["output_tokens_per_s"],
                         "requests": summary["requests"], "output_tokens": summary["output_tokens"],
                         "ttft_p50_ms": summary["ttft_p50_ms"], "latency_p50_ms": summary["latency_p50_ms"],
                         "mean_batch_size": rows_decoded / steps if steps else 0.0})
    finally:
        teardown(handle)
    base = next((r["output_tokens_per_s"] for r in rows if r["concurrency"] == 1), None)
    for row in rows:
        row["one_at_a_time_output_tokens_per_s"] = base
        row["ratio_to_one_at_a_time"] = row["output_tokens_per_s"] / base if base else None
    return rows


def system_prompt_tokens(sessions: list[Session], model: str | None) -> int:
    """Tokens of the workload's distinct system prompts, as the model renders them (the sharable prefixes)."""
    from cache_actors.engine.prompt_encoder import PromptEncoder

    encoder = PromptEncoder.load(model)
    return sum(len(encoder.encode_chat([{"role": "system", "content": s}])) for s in {s.system for s in sessions})


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def goals(runs: list[dict[str, Any]], batching: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, checked against this run's figures (reported, never asserted)."""
    by = {r["routing"]: r for r in runs}
    out: dict[str, Any] = {"targets": GOALS}
    if "affinity" in by and "pow2" in by:
        a, p = by["affinity"], by["pow2"]
        out["hit_rate_ratio"] = _ratio(a["token_hit_rate"], p["token_hit_rate"])
        out["own_shard_hit_rate_ratio"] = _ratio(a["own_shard_hit_rate"], p["own_shard_hit_rate"])
        out["ttft_p50_ratio"] = a["ttft_p50_ms"] / p["ttft_p50_ms"]
        out["affinity_load_max_over_mean"] = a["load_max_over_mean"]
        out["routing_met"] = (out["hit_rate_ratio"] is not None and out["hit_rate_ratio"] >= GOALS["hit_rate_ratio_min"]
                              and out["ttft_p50_ratio"] <= GOALS["ttft_p50_ratio_max"]
                              and a["load_max_over_mean"] <= GOALS["load_max_over_mean_max"])
    top = next((r for r in batching if r["concurrency"] == 16), None)
    if top is not None and top["ratio_to_one_at_a_time"] is not None:
        out["batching_ratio_at_16"] = top["ratio_to_one_at_a_time"]
        out["batching_met"] = top["ratio_to_one_at_a_time"] >= GOALS["batching_ratio_min"]
    return out


def run_benchmark(config: ServeBenchConfig, routings: tuple[str, ...], progress: Progress | None = None) -> dict[str, Any]:
    """Both phases on the running Ray + Serve; the JSON payload."""
    sessions = make_workload(config.workload, requests=config.requests, tenants=config.tenants,
                             prefix_tokens=config.prefix_tokens, question_tokens=config.question_tokens,
                             turns=config.turns, zipf=config.zipf, seed=config.seed)
    shared = system_prompt_tokens(sessions, config.model)
    capacity = max(config.block_size, int(config.cache_fraction * shared))
    runs = [run_routing(config, routing, sessions, capacity, progress) for routing in routings]
    batching = run_batching(config, progress)
    return {"benchmark": "serve", "config": {**asdict(config), "batching": list(config.batching)},
            "shard_capacity_tokens": capacity, "distinct_system_prompt_tokens": shared,
            "cpus": os.cpu_count(), "runs": runs, "batching": batching, "goals": goals(runs, batching)}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(result: dict[str, Any]) -> None:
    config = result["config"]
    print_table(
        f"llm serving: {config['workload']}, {config['replicas']} replicas, {config['concurrency']} clients, "
        f"{config['requests']} requests, shard capacity {result['shard_capacity_tokens']} tokens",
        ["routing", "req/s", "tok/s", "TTFT p50", "p95", "p99", "hit rate", "load", "in-flight"],
        [[r["routing"], r["requests_per_s"], r["output_tokens_per_s"], r["ttft_p50_ms"], r["ttft_p95_ms"],
          r["ttft_p99_ms"], r["token_hit_rate"], r["load_max_over_mean"], r["in_flight_max_over_mean"]]
         for r in result["runs"]],
    )
    console.print("[dim]TTFT in ms; load and in-flight: max over mean across replicas[/dim]")
    for r in result["runs"]:
        decisions = " ".join(f"{k}={v}" for k, v in sorted((r["router_decisions"] or {}).items())) or "(Serve's pow2 router)"
        console.print(f"{r['routing']}: requests per replica {list(r['requests_per_replica'].values())}, "
                      f"own-shard hit rate {r['own_shard_hit_rate']:.3f}, reused tokens by source "
                      f"{r['hit_tokens_by_source']}; decisions {decisions}")
    if result["batching"]:
        print_table("continuous batching: 1 replica, unique prompts", ["clients", "out tok/s", "x one at a time",
                    "mean batch", "TTFT p50 ms"],
                    [[b["concurrency"], b["output_tokens_per_s"], b["ratio_to_one_at_a_time"] or "-",
                      b["mean_batch_size"], b["ttft_p50_ms"]] for b in result["batching"]])
    g = result["goals"]
    if "hit_rate_ratio" in g:
        console.print(f"affinity/pow2: hit rate x{_fmt(g['hit_rate_ratio'])} (goal >= 2; own shard only "
                      f"x{_fmt(g['own_shard_hit_rate_ratio'])}), TTFT p50 x{g['ttft_p50_ratio']:.2f} "
                      f"(goal <= 0.5), affinity load max/mean {g['affinity_load_max_over_mean']:.2f} (goal <= 1.3): "
                      f"[bold]{'met' if g['routing_met'] else 'NOT met'}[/bold]")
    if "batching_ratio_at_16" in g:
        console.print(f"batching: 16 clients = x{g['batching_ratio_at_16']:.2f} one at a time (goal >= 4): "
                      f"[bold]{'met' if g['batching_met'] else 'NOT met'}[/bold]")


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@bench_app.command("serve")
def serve_command(
    replicas: Annotated[int, typer.Option(min=1, help="LLMServer replicas (one KV shard each).")] = 2,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Closed-loop clients (default 4).")] = None,
    workload: Annotated[str, typer.Option(help=f"One of {', '.join(WORKLOADS)}.")] = "multitenant",
    routing: Annotated[str, typer.Option(help="affinity, pow2, both (affinity then pow2) or an order, e.g. pow2,affinity.")] = "both",
    requests: Annotated[int | None, typer.Option(min=1, help="Requests per routing (default 128; quick 16).")] = None,
    tenants: Annotated[int | None, typer.Option(min=1, help="Tenants of multitenant (default 8).")] = None,
    prefix_tokens: Annotated[int | None, typer.Option(min=1, help="System prompt tokens (default 768).")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Output tokens per request (default 16).")] = None,
    cache_fraction: Annotated[float, typer.Option(min=0.01, help="Shard capacity / distinct system prompt tokens.")] = 0.55,
    zipf: Annotated[float, typer.Option(min=0.0, help="Zipf exponent of tenant popularity (0: uniform).")] = 0.0,
    batching: Annotated[str | None, typer.Option(help="Client levels of the batching phase, e.g. 1,4,16; '' skips it.")] = None,
    batch_prompt_tokens: Annotated[int | None, typer.Option(min=1, help="Batching phase prompt tokens (default 64).")] = None,
    batch_max_tokens: Annotated[int | None, typer.Option(min=1, help="Batching phase output tokens (default 128).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per replica in the routing phase.")] = 1,
    batch_threads: Annotated[int, typer.Option(min=1, help="torch threads of the batching phase's replica.")] = 1,
    model: Annotated[str | None, typer.Option(help="Local Hugging Face model folder (default: the demo model).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the workload.")] = 0,
    quick: Annotated[bool, typer.Option(help="Small sizes for a smoke test.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Serving throughput, TTFT, token hit rate and replica balance: cache-aware vs pow2 routing, and batching."""
    routings = ROUTINGS if routing == "both" else tuple(part.strip() for part in routing.split(","))
    if not routings or any(r not in ROUTINGS for r in routings):
        raise typer.BadParameter(f"--routing must be affinity, pow2, both or a list like pow2,affinity; got {routing!r}")
    given = {"concurrency": concurrency, "requests": requests, "tenants": tenants, "prefix_tokens": prefix_tokens,
             "max_tokens": max_tokens, "batching": None if batching is None else _levels(batching),
             "batch_prompt_tokens": batch_prompt_tokens, "batch_max_tokens": batch_max_tokens}
    fields = {**(QUICK if quick else {}), **{k: v for k, v in given.items() if v is not None}}
    try:
        config = ServeBenchConfig(replicas=replicas, workload=workload, cache_fraction=cache_fraction, zipf=zipf,
                                  model=model, seed=seed, num_threads=threads, batch_threads=batch_threads, **fields)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"Starting Ray + Serve; {workload} x {config.requests} requests per routing ({', '.join(routings)}) ...")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with ExitStack() as stack:
        with console.status("starting Ray + Serve"):
            stack.enter_context(local_serve())
        progress = stack.enter_context(Progress(*columns, console=console, transient=True))
        result = run_benchmark(config, routings, progress)
    print_report(result)
    write_json(json_out, result)
