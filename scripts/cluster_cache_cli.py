"""`blatam cache clear` and `blatam cache shutdown`: the KV actors of a running cluster.

Both join the cluster at ``--address`` (default ``auto``: ``RAY_ADDRESS`` or
the cluster this host started last, e.g. by `blatam up`) with a bounded
wait, and send the host's Ray token when there is one
(`scripts.ray_access.send_token_when_present`). Exit codes: 0 done, 1 some
actor did not clear or close cleanly (listed), 2 the cluster could not be
reached (one line naming the address tried).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

AddressOpt = Annotated[str, typer.Option(
    "--address", help="Ray cluster: host:port of its GCS, or auto (RAY_ADDRESS, else the cluster this host started).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JOIN_TIMEOUT_S = 15.0


def _join(address: str) -> None:
    """Join the cluster or exit 2 with one line that names the address."""
    from scripts.ray_access import send_token_when_present

    send_token_when_present()  # before Ray is imported: its auth mode is read once, at import
    from cache_actors.actors.ray_join import RayUnreachableError, join_ray
    try:
        with console.status(f"joining the Ray cluster at {address}"):
            join_ray(address, timeout_s=JOIN_TIMEOUT_S, log_to_driver=False)
    except RayUnreachableError as exc:
        print(f"blatam cache: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None


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
