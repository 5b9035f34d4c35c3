"""How every verb against a running cluster joins it: bounded, with the host's token, one line when it cannot.

``--address`` defaults to ``auto``: ``RAY_ADDRESS``, else the cluster this host
started last (e.g. by `blatam up`). The host's Ray token is sent when there is
one (`scripts.ray_access.send_token_when_present`, before Ray is imported: its
auth mode is read once, at import). A cluster that cannot be reached is exit
code 2 with one line naming the address tried and how to point elsewhere.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

AddressOpt = Annotated[str, typer.Option(
    "--address", help="Ray cluster: host:port of its GCS, or auto (RAY_ADDRESS, else the cluster this host started).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
JOIN_TIMEOUT_S = 15.0
LISTEN_TIMEOUT_S = 3.0
"""A running cluster listens at once: three seconds of nothing is an answer an operator wants now."""
UNREACHABLE_EXIT = 2


def join_cluster(address: str, verb: str, console: Console) -> None:
    """Join the cluster at `address` or exit 2 with one line (prefixed ``blatam <verb>:``) that names it."""
    from scripts.ray_access import send_token_when_present

    send_token_when_present()
    from cache_actors.actors.ray_join import RayUnreachableError, join_ray
    try:
        with console.status(f"joining the Ray cluster at {address}"):
            join_ray(address, timeout_s=JOIN_TIMEOUT_S, listen_timeout_s=LISTEN_TIMEOUT_S, log_to_driver=False)
    except RayUnreachableError as exc:
        print(f"blatam {verb}: {exc} (point --address or RAY_ADDRESS at a running cluster)", file=sys.stderr,
              flush=True)
        raise typer.Exit(UNREACHABLE_EXIT) from None
