"""`blatam status`: what runs on a cluster, and whether each part answers.

Applications with their deployments and replicas per state; the KV shards
per node (blocks, bytes against the budget, the shard's last event sequence
against what the coordinator has seen, each lower tier reachable or not);
the coordinator (index size, shards it knows, snapshot age).

Exit codes: 0 all healthy; 1 something is not (an application not RUNNING,
a shard, tier or the coordinator not answering; the tables say which);
2 the cluster could not be reached.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from scripts.ops.join import AddressOpt, JsonOpt, join_cluster

console = Console()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:,.0f} s ago"


def _problems(apps, view) -> list[str]:
    out = [f"application {a.name} is {a.status}" for a in apps if a.status != "RUNNING"]
    for shard in view.shards:
        if not shard.reachable:
            out.append(f"shard {shard.name} does not answer ({shard.error})")
        out += [f"shard {shard.name}: tier {name} unreachable ({t.get('detail', '')})"
                for name, t in shard.tiers.items() if not t.get("reachable")]
    if view.coordinator is not None and not view.coordinator.reachable:
        out.append(f"the coordinator does not answer ({view.coordinator.error})")
    elif view.coordinator is not None and view.coordinator.snapshot_restore_pending:
        out.append("the coordinator could not read its last snapshot from Redis yet (it retries; tier locations "
                   "the snapshot holds are unknown until then)")
    return out


def _print(apps, serve_note: str, view, problems: list[str]) -> None:
    if serve_note:
        console.print(f"[yellow]Serve:[/yellow] {serve_note}")
    else:
        table = Table(title="Applications")
        for column in ("application", "status", "deployment", "deployment status", "replicas"):
            table.add_column(column)
        for app in apps:
            for i, d in enumerate(app.deployments or [None]):
                replicas = ", ".join(f"{state} {n}" for state, n in sorted(d.replicas.items())) if d else ""
                table.add_row(app.name if i == 0 else "", app.status if i == 0 else "", d.name if d else "",
                              d.status if d else "", replicas)
        console.print(table)
    if not view.shards:
        console.print("KV cache: no shards in this cluster (none is made before an LLM replica with the "
                      "distributed cache starts).")
    else:
        table = Table(title="KV shards")
        for column in ("node", "device", "blocks", "MiB used / budget", "seq (coordinator)", "tiers"):
            table.add_column(column)
        for s in view.shards:
            if not s.reachable:
                table.add_row(s.node_id[:12], s.device, "[red]no answer[/red]", "", "", s.error)
                continue
            seen = "?" if s.coordinator_seq is None else str(s.coordinator_seq)
            tiers = ", ".join(f"{name} {'[green]ok[/green]' if t.get('reachable') else '[red]down[/red]'}"
                              for name, t in s.tiers.items()) or "device only"
            table.add_row(s.node_id[:12], s.device, f"{s.blocks:,}/{s.capacity_blocks:,}",
                          f"{_mib(s.bytes_used)} / {_mib(s.bytes_capacity)}", f"{s.seq:,} ({seen})", tiers)
        console.print(table)
    c = view.coordinator
    if c is None:
        console.print("Coordinator: none in this cluster.")
    elif not c.reachable:
        console.print(f"Coordinator: [red]no answer[/red] ({c.error})")
    else:
        snapshots = _age(c.snapshot_age_s) if c.snapshots_on else "off (no Redis)"
        resyncing = f", resyncing {len(c.resyncing)}" if c.resyncing else ""
        console.print(f"Coordinator: index {c.blocks:,} blocks over {c.shards} shard(s), last snapshot {snapshots}, "
                      f"up {c.uptime_s:,.0f} s{resyncing}")
    for problem in problems:
        console.print(f"[red]problem:[/red] {problem}")


def status_command(address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Applications and replicas, KV shards per node, the coordinator, and whether each tier is reachable."""
    join_cluster(address, "status", console)
    from cache_actors.actors.cluster_view import cache_view
    from scripts.ops.serve_view import apps_json, serve_view

    with console.status("asking Serve and every KV actor"):
        apps, serve_note = serve_view()
        view = cache_view()
    problems = _problems(apps, view)
    if as_json:
        print(json.dumps({"applications": apps_json(apps), "serve": serve_note or "running", **view.to_json(),
                          "problems": problems}))
    else:
        _print(apps, serve_note, view, problems)
    if problems:
        raise typer.Exit(1)
