"""`blatam stats`: the cache's counters across the cluster, per shard and in total.

Read from Ray's metrics endpoints of every node (`scripts.ops.cluster_metrics`):
looked-up and hit tokens per tier (device, Redis, disk), the token hit rate,
blocks stored, evicted, demoted and prefetched, and the clients' fallbacks,
checksum mismatches and tier errors. Counters cover each process since it
started and trail by Ray's report interval (10 s by default).

Exit codes: 0 done; 1 no node's metrics endpoint answered; 2 the cluster
could not be reached.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from scripts.ops.cluster_metrics import TIERS, CacheCounters, ShardCounters
from scripts.ops.join import AddressOpt, JsonOpt, join_cluster

console = Console()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def short_shard(name: str) -> str:
    """``kvshard:<fingerprint>:<node id>:<device>`` as ``<node id, 12>/<device>``."""
    from cache_actors.actors.spec import parse_shard_name  # after joining the cluster: Ray is loaded by then

    parsed = parse_shard_name(name)
    return f"{parsed[1][:12]}/{parsed[2]}" if parsed else name


def cache_table(counters: CacheCounters, title: str = "KV cache, since each process started") -> Table:
    table = Table(title=title)
    for column in ("shard", "queried tok", *(f"hit {t}" for t in TIERS), "hit rate", "stored", "evicted",
                   "demoted", "prefetched"):
        table.add_column(column, justify="left" if column == "shard" else "right")

    def row(label: str, c: ShardCounters, style: str = "") -> None:
        table.add_row(label, f"{c.queried_tokens:,.0f}", *(f"{c.hit_tokens.get(t, 0):,.0f}" for t in TIERS),
                      _rate(c.hit_rate), f"{c.stored_blocks:,.0f}", f"{c.evicted_blocks:,.0f}",
                      f"{sum(c.demoted_blocks.values()):,.0f}", f"{c.prefetched_blocks:,.0f}", style=style)

    for name, c in sorted(counters.shards.items()):
        row(short_shard(name), c)
    row("total", counters.total, style="bold")
    return table


def _events_line(counters: CacheCounters) -> str:
    parts = []
    for label, values in (("fallbacks", counters.fallbacks), ("checksum mismatches", counters.checksum_mismatches),
                          ("tier errors", counters.tier_errors)):
        detail = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(values.items())) or "none"
        parts.append(f"{label}: {detail}")
    return "; ".join(parts)


def stats_command(address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Cluster-wide KV cache statistics: tokens queried and hit per tier, hit rate, evictions, demotions, prefetches."""
    join_cluster(address, "stats", console)
    from cache_actors.actors.cluster_view import metrics_urls
    from scripts.ops.cluster_metrics import cache_counters, scrape

    urls = metrics_urls()
    with console.status(f"reading the metrics of {len(urls)} node(s)"):
        result = scrape(urls)
    counters = cache_counters(result.samples)
    if as_json:
        print(json.dumps({**counters.to_json(), "endpoints": len(urls), "failures": result.failures}))
    else:
        console.print(cache_table(counters))
        console.print(_events_line(counters))
        for failure in result.failures:
            console.print(f"[yellow]not read:[/yellow] {failure}")
    if urls and len(result.failures) == len(urls):
        raise typer.Exit(1)
