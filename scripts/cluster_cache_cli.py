"""`blatam cache clear|shutdown|persist|load`: the KV actors of a running cluster.

Each joins the cluster at ``--address`` as every cluster verb does
(`scripts.ops.join`). `persist` and `load` move the whole cluster's cache to
and from a folder (`cache_actors.actors.cluster_persist`: one part per shard,
one manifest over all; a foreign or damaged set is refused before anything
changes). Exit codes: 0 done, 1 some actor or part did not succeed (listed) or
the set was refused, 2 the cluster could not be reached (one line naming the
address tried).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scripts.ops.join import AddressOpt, JsonOpt, join_cluster

console = Console()


def _join(address: str) -> None:
    join_cluster(address, "cache", console)


def _report(outcomes: list, verb: str, as_json: bool, *, blocks: bool = False) -> None:
    if as_json:
        print(json.dumps([{"name": o.name, "kind": o.kind, "ok": o.ok, "note": o.note,
                           **({"blocks": o.blocks} if blocks else {})} for o in outcomes]))
    elif not outcomes:
        console.print(f"No KV actors in this cluster: nothing to {verb}.")
    else:
        table = Table(title=f"KV actors: {verb}")
        for column in ("actor", "kind", *(("blocks removed",) if blocks else ()), "result"):
            table.add_column(column)
        for o in outcomes:
            result = f"[green]done[/green]{' (' + o.note + ')' if o.note else ''}" if o.ok else f"[red]{o.note}[/red]"
            table.add_row(o.name, o.kind, *((f"{o.blocks:,}",) if blocks else ()), result)
        console.print(table)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", help="Only this tenant's cached prompts (the tenant id the gateway gives its requests). "
    "Needs tenant_isolation on (the default): with it off, tenants share blocks and none is any one tenant's.")]


def clear_command(tenant: TenantOpt = None, address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Drop every cached block of every KV shard of a running cluster, or one tenant's (the actors and their
    pools stay; blocks a running request holds are kept and reported). Copies already demoted to Redis or
    disk stay until their TTL or the disk budget ends them."""
    if tenant is not None and not tenant.strip():
        console.print("blatam cache clear: --tenant needs a tenant id")
        raise typer.Exit(2)
    _join(address)
    from cache_actors.actors.cluster_admin import clear_shards, shard_names

    with _progress() as progress:
        task = progress.add_task(f"clearing tenant {tenant}'s blocks" if tenant else "clearing every shard",
                                 total=len(shard_names()))
        outcomes = clear_shards(tenant, on_done=lambda _: progress.advance(task))
    verb = f"clear tenant {tenant}" if tenant else "clear"
    if tenant and not as_json and outcomes and not any(o.blocks for o in outcomes):
        console.print(f"No cached blocks of tenant {tenant!r}.")
    _report(outcomes, verb, as_json, blocks=True)


def shutdown_command(address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Remove the KV shards and the coordinator of a running cluster (they outlive `serve shutdown` on purpose)."""
    _join(address)
    from cache_actors.actors.cluster_admin import shutdown_kv_actors

    with console.status("closing and removing the KV actors"):
        outcomes = shutdown_kv_actors()
    _report(outcomes, "shut down", as_json)


def _parts_report(outcomes: list, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"part": o.part, "shard": o.shard, "ok": o.ok, "blocks": o.blocks, "note": o.note}
                          for o in outcomes]))
    else:
        table = Table(title=f"KV cache parts: {verb}")
        for column in ("part", "shard", "blocks", "result"):
            table.add_column(column)
        for o in outcomes:
            table.add_row(o.part, o.shard, f"{o.blocks:,}", "[green]done[/green]" if o.ok else f"[red]{o.note}[/red]")
        console.print(table)
    if not outcomes or not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


DirArg = typer.Argument(..., help="Folder for the set (on several nodes: a folder every node sees at this path).")


def persist_command(directory: Path = DirArg, address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Write every shard's cached blocks to DIR, one part per shard and one manifest over all."""
    _join(address)
    from cache_actors.actors.cluster_admin import shard_names
    from cache_actors.actors.cluster_persist import persist_cluster

    shards = len(shard_names())
    with _progress() as progress:
        task = progress.add_task("shards writing their part", total=shards)
        outcomes = persist_cluster(directory, on_part=lambda _: progress.advance(task))
    if not outcomes and not as_json:
        console.print("No KV shards in this cluster: nothing to persist.")
    _parts_report(outcomes, f"persisted to {directory.resolve()}", as_json)


def load_command(directory: Path = DirArg, address: AddressOpt = "auto", as_json: JsonOpt = False) -> None:
    """Load a set written by `blatam cache persist` into the running shards, after checking all of it."""
    _join(address)
    from cache_actors.actors.cluster_persist import load_cluster, read_cluster_manifest
    from cache_actors.core.persistence import PersistenceError

    try:
        total = len(read_cluster_manifest(directory))
        with _progress() as progress:
            task = progress.add_task("checking every part", total=total)

            def phase(name: str) -> None:
                progress.reset(task, total=total, description="shards loading their part" if name == "load"
                               else "checking every part")

            outcomes = load_cluster(directory, on_part=lambda _: progress.advance(task), on_phase=phase)
    except PersistenceError as exc:
        print(f"blatam cache load: refused, nothing changed: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    _parts_report(outcomes, f"loaded from {directory.resolve()}", as_json)
