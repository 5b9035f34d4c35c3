"""`blatam bench policies`: eviction policies replayed on a request trace.

Replays a Mooncake-format trace (``--trace``, or one generated on the fly with
``--workload``) through the production `BlockIndex` and policy classes (see
`cache_actors.policies.simulator` for the exact semantics) at several capacities, and
reports per policy and capacity the block hit rate and the prefill tokens
saved, with the offline optimum ``belady`` as the ceiling. Prints a table,
writes JSON (``--json OUT``) and a plot of tokens saved vs capacity next to it
(``OUT`` with a ``.png`` suffix).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from scripts.bench import bench_app
from scripts.bench.traces import DEFAULT_BLOCK_TOKENS, DEFAULT_REQUESTS, WORKLOADS, generate

if TYPE_CHECKING:  # `cache_actors` imports torch (seconds): it loads inside the command, not for `--help`
    from cache_actors.policies.simulator import PreparedTrace, SweepCell

DEFAULT_CAPACITIES = "0.01,0.05,0.1,0.25"
DEFAULT_POLICIES = "lru,lfu,adaptive"


def parse_capacities(text: str) -> list[float]:
    """``"0.01,0.05"`` -> [0.01, 0.05]; fractions of unique blocks (< 1) or block counts (>= 1)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"not a comma-separated list of numbers: {text!r}", param_hint="--capacities") from None
    if not values or any(not v > 0 or v != v or v == float("inf") for v in values):
        raise typer.BadParameter("capacities must be positive numbers", param_hint="--capacities")
    return values


def parse_policies(text: str) -> list[str]:
    """Registry names; ``belady`` (the ceiling) is always added last."""
    from cache_actors.policies import POLICY_REGISTRY
    from cache_actors.policies.simulator import BELADY

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n != BELADY and n not in POLICY_REGISTRY]
    if unknown or not names:
        supported = ", ".join(sorted(POLICY_REGISTRY) + [BELADY])
        raise typer.BadParameter(f"unknown policies {unknown}; supported: {supported}", param_hint="--policies")
    names = list(dict.fromkeys(n for n in names if n != BELADY))
    return [*names, BELADY]


def report(trace: PreparedTrace, cells: list[SweepCell], *, source: str, elapsed_s: float) -> dict[str, Any]:
    """The JSON document: trace facts and one entry per (policy, capacity)."""
    results = [cell.as_dict() for cell in cells]
    lru = {r["capacity_blocks"]: r["tokens_saved"] for r in results if r["policy"] == "lru"}
    for r in results:
        base = lru.get(r["capacity_blocks"])
        r["vs_lru"] = r["tokens_saved"] / base if base else None
    return {
        "source": source,
        "block_tokens": trace.block_tokens,
        "requests": trace.num_requests,
        "unique_blocks": trace.unique_blocks,
        "blocks_total": trace.total_blocks,
        "tokens_total": trace.total_tokens,
        "elapsed_s": round(elapsed_s, 2),
        "results": results,
    }


def render_table(doc: dict[str, Any]) -> Table:
    """One row per (capacity, policy): hit rate, tokens saved and the ratio to LRU."""
    table = Table(title=f"{doc['source']}: {doc['requests']} requests, {doc['unique_blocks']} unique blocks")
    for header in ("capacity", "blocks", "policy", "hit rate", "tokens saved", "saved", "vs lru"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    previous = None
    for r in doc["results"]:
        first = r["capacity_blocks"] != previous
        if first and previous is not None:
            table.add_section()
        previous = r["capacity_blocks"]
        table.add_row(
            f"{r['capacity_fraction']:.2%}" if first else "",
            str(r["capacity_blocks"]) if first else "",
            r["policy"],
            f"{r['hit_rate']:.3f}",
            f"{r['tokens_saved']:,}",
            f"{r['saved_fraction']:.3f}",
            "-" if r["vs_lru"] is None else f"{r['vs_lru']:.2f}x",
        )
    return table


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Tokens saved vs capacity, one line per policy (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cache_actors.policies.simulator import BELADY

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["policy"] for r in doc["results"]):
        points = sorted((r["capacity_fraction"], r["saved_fraction"]) for r in doc["results"] if r["policy"] == name)
        style = "--" if name == BELADY else "-"
        ax.plot([x for x, _ in points], [y for _, y in points], style, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("capacity (fraction of the trace's unique blocks)")
    ax.set_ylabel("prefill tokens saved (fraction)")
    ax.set_title(f"Eviction policies on {doc['source']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@bench_app.command("policies")
def policies_command(
    json_out: Path = typer.Option(..., "--json", help="Where to write the results (JSON); the plot goes next to it (.png)."),
    trace: Path | None = typer.Option(None, "--trace", help="Mooncake-format JSONL trace to replay."),
    workload: str | None = typer.Option(None, "--workload", help=f"Instead of --trace, generate one of: {', '.join(WORKLOADS)}."),
    requests: int = typer.Option(DEFAULT_REQUESTS, "--requests", min=1, help="Requests to generate with --workload."),
    seed: int = typer.Option(0, "--seed", help="Seed for --workload."),
    block_tokens: int = typer.Option(DEFAULT_BLOCK_TOKENS, "--block-tokens", min=1, help="Tokens per block of the trace."),
    capacities: str = typer.Option(DEFAULT_CAPACITIES, "--capacities", help="Fractions of the unique blocks (< 1) or block counts (>= 1)."),
    policies: str = typer.Option(DEFAULT_POLICIES, "--policies", help="Registered policies to compare (belady is always added)."),
) -> None:
    """Replay a request trace through each eviction policy at several cache sizes."""
    console = Console()
    caps = parse_capacities(capacities)
    with console.status("importing the cache engine (torch)"):
        from cache_actors.policies.simulator import TraceError, load_trace, prepare_trace, sweep
    names = parse_policies(policies)
    if (trace is None) == (workload is None):
        raise typer.BadParameter("give exactly one of --trace or --workload", param_hint="--trace")
    if workload is not None and workload not in WORKLOADS:
        raise typer.BadParameter(f"unknown workload {workload!r}; supported: {', '.join(WORKLOADS)}", param_hint="--workload")
    try:
        if trace is not None:
            prepared, source = prepare_trace(load_trace(trace), block_tokens), trace.name
        else:
            prepared = prepare_trace(generate(workload, requests, seed=seed, block_tokens=block_tokens), block_tokens)
            source = f"{workload} (seed {seed})"
    except TraceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--trace") from None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("replaying", total=len(caps) * len(names) * prepared.num_requests)
        done: dict[tuple[str, float], int] = {}

        def advance(policy: str, capacity: float, n: int) -> None:
            done[(policy, capacity)] = n
            bar.update(task, completed=sum(done.values()), description=f"{policy} @ {capacity:g}")

        cells = sweep(prepared, caps, names, progress=advance)
    doc = report(prepared, cells, source=source, elapsed_s=time.perf_counter() - started)

    console.print(render_table(doc))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    plot = json_out.with_suffix(".png")
    write_plot(doc, plot)
    console.print(f"wrote {json_out} and {plot}")
