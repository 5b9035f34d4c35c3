"""The PNG plots of `blatam bench report`, one function per figure, drawn from the benchmarks' JSON.

Each function takes the JSON document(s) a benchmark wrote and a path, draws
with matplotlib's Agg backend (no display on a server or in CI) and returns
the path, or None when the document has nothing to plot, so a part that
failed or was skipped simply has no figure. Figures are 800x500 px at 100
dpi: small enough to commit next to BENCHMARKS.md.

matplotlib is imported inside the functions: `blatam --help` must not pay
for it (tests/scripts/test_cli_startup.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SIZE_IN = (8.0, 5.0)
DPI = 100
BELADY = "belady"
"""The offline optimum in `blatam bench policies` (cache_actors.policies.simulator.BELADY, not imported: torch)."""


def _figure() -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=SIZE_IN, dpi=DPI)


def _plain() -> Any:
    """Tick labels of a log axis as plain numbers (100, 1000), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def _save(fig: Figure, ax: Axes, path: Path) -> Path:
    """Grid, layout and the write; the figure is closed so a long report does not accumulate them."""
    import matplotlib.pyplot as plt

    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_ttft(runs: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """TTFT against prompt length: uncached, the engine's cache, and the in-process ideal (`blatam bench ttft`).

    Log-log, because uncached prefill grows faster than linearly while a
    cached prompt only prefills its ``new_tokens`` tail: the gap is the point.
    """
    rows = sorted((r for r in runs if r), key=lambda r: r["prompt_tokens"])
    if not rows:
        return None
    fig, ax = _figure()
    x = [r["prompt_tokens"] for r in rows]
    ax.plot(x, [r["uncached_ms"] for r in rows], "-o", label="uncached")
    ax.plot(x, [r["cached_ms"] for r in rows], "-o", label=f"cached (all but the last {rows[0]['new_tokens']} tokens)")
    ax.plot(x, [r["ideal_ms"] for r in rows], "--", marker=".", label="ideal (model's own cache reused)")
    if any("actor_ms" in r for r in rows):
        ax.plot([r["prompt_tokens"] for r in rows if "actor_ms" in r], [r["actor_ms"] for r in rows if "actor_ms" in r],
                "-s", label="cached through the shard actor")
    for r in rows:
        ax.annotate(f"{r['speedup']:.1f}x faster", (r["prompt_tokens"], r["cached_ms"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_plain())
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token, median ms")
    ax.set_title(f"TTFT vs prompt length ({rows[0]['model']}, {rows[0]['dtype']}, {rows[0]['threads']} threads)")
    ax.legend()
    return _save(fig, ax, path)


def plot_policies(doc: dict[str, Any] | None, path: Path) -> Path | None:
    """Prefill tokens saved per eviction policy against cache capacity, Belady (offline optimum) as the bound."""
    if not doc or not doc.get("results"):
        return None
    fig, ax = _figure()
    for name in dict.fromkeys(r["policy"] for r in doc["results"]):
        points = sorted((r["capacity_fraction"], r["saved_fraction"]) for r in doc["results"] if r["policy"] == name)
        bound = name == BELADY
        ax.plot([p for p, _ in points], [s for _, s in points], "--" if bound else "-o", color="black" if bound else None,
                label="Belady (offline bound)" if bound else name)
    capacities = sorted({r["capacity_fraction"] for r in doc["results"]})
    ax.set_xscale("log")
    ax.set_xticks(capacities, [f"{c * 100:.3g}%" for c in capacities])
    ax.minorticks_off()
    ax.set_xlabel("cache capacity (share of the trace's unique blocks)")
    ax.set_ylabel("prefill tokens saved (fraction of all)")
    ax.set_title(f"Eviction policies on {doc['source']}: {doc['requests']:,} requests")
    ax.legend()
    return _save(fig, ax, path)


def plot_throughput(serve: dict[str, Any] | None, peers: dict[str, Any] | None, path: Path) -> Path | None:
    """Output tokens/s against concurrent clients: `serve`'s batching phase, and `peers` (ours and the peer) if run.

    The dotted line is perfect scaling of one client's rate: how far batching
    gets towards it is what continuous batching buys.
    """
    batching = (serve or {}).get("batching") or []
    if not batching and not peers:
        return None
    fig, ax = _figure()
    levels: list[int] = []
    if batching:
        rows = sorted(batching, key=lambda b: b["concurrency"])
        levels += [b["concurrency"] for b in rows]
        ax.plot(levels, [b["output_tokens_per_s"] for b in rows], "-o", label="one replica (bench serve)")
        base = rows[0]["one_at_a_time_output_tokens_per_s"]
        if base:
            ax.plot(levels, [base * n for n in levels], ":", color="grey", label="linear scaling of 1 client")
    if peers:
        n = peers["workload"]["concurrency"]
        levels += [1, n]
        for side, label in (("ours", "Blatam (bench peers)"), ("peer", peers["peer_name"])):
            ax.plot([1, n], [peers[side]["tok_s_1"], peers[side]["tok_s_16"]], "-s", label=label)
    ticks = sorted(set(levels))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs concurrency")
    ax.legend()
    return _save(fig, ax, path)


def plot_soak(soak: dict[str, Any] | None, path: Path) -> Path | None:
    """p50/p95/p99 latency of each of the soak's sample windows over the run (drift shows as a slope)."""
    from scripts.bench.report_sections import under_load

    windows = under_load(soak) if soak else []
    if not windows:
        return None
    fig, ax = _figure()
    t = [w["end_s"] for w in windows]
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(t, [w["latency"][key] for w in windows], "-o", markersize=3, label=label)
    warmup = soak["config"].get("warmup_s")
    if warmup:
        ax.axvline(warmup, color="grey", linestyle=":", label="end of warm-up (memory baseline)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds into the soak (end of each sample window)")
    ax.set_ylabel("request latency, ms")
    config = soak["config"]
    ax.set_title(f"Soak: {soak['sent']:,} requests at {config['rate_per_s']:g}/s, {soak['errors']} errors")
    ax.legend()
    return _save(fig, ax, path)


def plot_faults(faults: dict[str, Any] | None, path: Path) -> Path | None:
    """Seconds from each fault to the last refused request (0: nothing was refused), one bar per fault."""
    if not faults:
        return None
    names = list(faults)
    fig, ax = _figure()
    values = [faults[n]["recovery_s"] for n in names]
    bars = ax.barh(names, values, color=["tab:red" if faults[n]["failed"] else "tab:blue" for n in names])
    for bar, name in zip(bars, names):
        r = faults[name]
        ax.annotate(f"{r['recovery_s']:g} s  ({r['refused']} refused, {r['failed']} failed)",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values + [1.0]) * 1.6)
    ax.set_xlabel("recovery: seconds from the fault to the last refused request")
    ax.set_title("Faults under load (red: some request failed)")
    return _save(fig, ax, path)


PLOTS = {
    "ttft": lambda results, path: plot_ttft(results.get("ttft") or [], path),
    "policies": lambda results, path: plot_policies(results.get("policies"), path),
    "throughput": lambda results, path: plot_throughput(results.get("serve"), results.get("peers"), path),
    "soak": lambda results, path: plot_soak(results.get("soak"), path),
    "faults": lambda results, path: plot_faults(results.get("faults"), path),
}
"""Figure name -> how to draw it from every part's results (part name -> its JSON)."""


def write_plots(results: dict[str, Any], folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure the results allow, as ``folder/<name>.png``: (figure name -> path, figure name -> error).

    A figure with no data removes its PNG of an earlier run, so the folder
    never shows a stale plot; one that fails to draw is reported, not raised,
    so the page still gets written.
    """
    written: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for name, draw in PLOTS.items():
        path = folder / f"{name}.png"
        try:
            drawn = draw(results, path)
        except Exception as exc:  # noqa: BLE001 - a bad document costs its figure, not the report
            errors[name] = f"{type(exc).__name__}: {exc}"
            drawn = None
        if drawn is None:
            path.unlink(missing_ok=True)
        else:
            written[name] = drawn
    return written, errors
