"""`blatam cache clear` and `blatam cache shutdown`: the KV actors of a running cluster.

Both join the cluster at ``--address`` as every cluster verb does
(`scripts.ops.join`). Exit codes: 0 done, 1 some actor did not clear or close
cleanly (listed), 2 the cluster could not be reached (one line naming the
address tried).
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from scripts.ops.join import AddressOpt, JsonOpt, join_cluster

console = Console()


def _join(address: str) -> None:
    join_cluster(address, "cache", console)


def _report(outcomes: list, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"name": o.name, "kind": o.kind, "ok": o.ok, "note": o.note} for o in outcomes]))
    elif not outcomes:
        console.print(f"No KV actors in this cluster: nothing to {verb}.")
    else:
        table = Table(title=f"KV actors: {verb}")
        for column in ("actor", "kind", "result"):
            table.add_column(column)
        for o in outcomes:
            table.add_row(o.name, o.kind, "[green]done[/green]" if o.ok else f"[red]{o.note}[/red]")
        console.print(table)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def clear_command(address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Drop every cached block of every KV shard of a running cluster (the actors and their pools stay)."""
    _join(address)
    from cache_actors.actors.cluster_admin import clear_shards

    with console.status("clearing every shard"):
        outcomes = clear_shards()
    _report(outcomes, "clear", as_json)


def shutdown_command(address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Remove the KV shards and the coordinator of a running cluster (they outlive `serve shutdown` on purpose)."""
    _join(address)
    from cache_actors.actors.cluster_admin import shutdown_kv_actors

    with console.status("closing and removing the KV actors"):
        outcomes = shutdown_kv_actors()
    _report(outcomes, "shut down", as_json)
