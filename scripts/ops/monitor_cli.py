"""`blatam monitor`: a live terminal dashboard of a running cluster, refreshed in place.

Every ``--interval`` seconds it reads the metrics of every node
(`scripts.ops.cluster_metrics`) and the shards' occupancy
(`cache_actors.actors.cluster_view`), and shows the LLM app's request rate,
generated tokens/s, TTFT and cache share over the last interval, and per
shard the hit rate, blocks and bytes against the budget. ``q`` (when stdin is
a terminal) or Ctrl-C leaves it and restores the terminal; ``--iterations N``
stops after N refreshes (for scripts). Rates trail by Ray's report interval.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from scripts.ops.cluster_metrics import CacheCounters, LLMCounters, LLMRates
from scripts.ops.join import AddressOpt, join_cluster
from scripts.ops.stats_cli import short_shard

console = Console()


@dataclass(frozen=True, slots=True)
class Reading:
    at: float
    llm: LLMCounters
    cache: CacheCounters
    shards: list  # cache_actors.actors.cluster_view.ShardView
    failures: list[str]


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render_frame(address: str, reading: Reading, rates: LLMRates | None) -> Group:
    """One screen: the LLM app over the last interval, then the cache per shard."""
    llm = Table.grid(padding=(0, 3))
    for _ in range(6):
        llm.add_column(justify="right")
    llm.add_row("requests/s", "tokens/s", "TTFT mean", "TTFT p50", "cached share", "running / waiting", style="dim")
    if rates is None:
        llm.add_row("…", "…", "…", "…", "…", f"{reading.llm.running:,.0f} / {reading.llm.waiting:,.0f}")
    else:
        llm.add_row(f"{rates.requests_per_s:,.2f}", f"{rates.generated_tokens_per_s:,.1f}",
                    _fmt(rates.ttft_mean_ms, ",.0f", " ms"), _fmt(rates.ttft_p50_ms, ",.0f", " ms"),
                    _fmt(rates.cached_share, ".0%"), f"{reading.llm.running:,.0f} / {reading.llm.waiting:,.0f}")
    shards = Table(expand=True)
    for column in ("shard", "blocks", "MiB used / budget", "hit rate", "evicted", "tiers"):
        shards.add_column(column, justify="left" if column in ("shard", "tiers") else "right")
    for s in reading.shards:
        counters = reading.cache.shards.get(s.name)
        hit = counters.hit_rate if counters else None
        if not s.reachable:
            shards.add_row(short_shard(s.name), "[red]no answer[/red]", "", "", "", s.error)
            continue
        tiers = ", ".join(f"{n} {'ok' if t.get('reachable') else '[red]down[/red]'}" for n, t in s.tiers.items())
        shards.add_row(short_shard(s.name), f"{s.blocks:,}/{s.capacity_blocks:,}",
                       f"{s.bytes_used / 2**20:,.1f} / {s.bytes_capacity / 2**20:,.1f}", _fmt(hit, ".1%"),
                       f"{counters.evicted_blocks:,.0f}" if counters else "0", tiers or "device only")
    total = reading.cache.total
    footer = Text(f"all shards: hit rate {_fmt(total.hit_rate, '.1%')} of {total.queried_tokens:,.0f} tokens looked "
                  f"up; fallbacks {sum(reading.cache.fallbacks.values()):,.0f}", style="dim")
    header = Text(f"Blatam cluster {address}  ·  {time.strftime('%H:%M:%S')}  ·  q or Ctrl-C to leave", style="bold")
    parts = [header, Panel(llm, title="LLM (last interval)"), Panel(Group(shards, footer), title="KV cache")]
    parts += [Text(f"not read: {f}", style="yellow") for f in reading.failures]
    return Group(*parts)


@contextlib.contextmanager
def _keys() -> Iterator[object]:
    """stdin in cbreak mode while the monitor runs (so `q` needs no Enter), restored after; a no-op off a TTY."""
    if not sys.stdin.isatty():
        yield None
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(fd: object, seconds: float) -> bool:
    """Sleep up to `seconds`; True when `q` was pressed meanwhile."""
    if fd is None:
        time.sleep(seconds)
        return False
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready and os.read(fd, 1).lower() == b"q":  # type: ignore[arg-type]
            return True
    return False


def monitor_command(
    address: AddressOpt = "auto",
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between refreshes."),
    iterations: int = typer.Option(0, "--iterations", min=0, help="Stop after this many refreshes (0: until q)."),
) -> None:
    """A live dashboard: LLM request rate, tokens/s and TTFT, and the KV cache per shard, refreshed in place."""
    join_cluster(address, "monitor", console)
    from cache_actors.actors.cluster_view import cache_view, metrics_urls
    from scripts.ops.cluster_metrics import cache_counters, llm_counters, llm_rates, scrape

    def read() -> Reading:
        result = scrape(metrics_urls())
        return Reading(time.monotonic(), llm_counters(result.samples), cache_counters(result.samples),
                       cache_view(timeout_s=max(1.0, interval)).shards, result.failures)

    previous = read()
    shown = 0
    try:
        with _keys() as fd, Live(render_frame(address, previous, None), console=console, auto_refresh=False) as live:
            while not iterations or shown < iterations:
                if _wait_for_quit(fd, interval):
                    break
                current = read()
                live.update(render_frame(address, current, llm_rates(previous.llm, current.llm,
                                                                     current.at - previous.at)), refresh=True)
                previous = current
                shown += 1
    except KeyboardInterrupt:
        pass
