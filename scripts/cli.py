"""The `blatam` command line: run the system, manage it, and benchmark it.

Each command group lives in its own module and registers itself here, so the
CLI stays a thin table of contents.
"""

from __future__ import annotations

import typer

from scripts.admin import keys_app, users_app
from scripts.bench import bench_app
from scripts.cache_cli import cache_app
from scripts.health import health
from scripts.model_cli import model_app
from scripts.observability.cli import dashboards_app
from scripts.ops.monitor_cli import monitor_command
from scripts.ops.stats_cli import stats_command
from scripts.ops.status_cli import status_command
from scripts.up import down, up

app = typer.Typer(
    name="blatam",
    help="Blatam: LLM business services on Ray Serve around a distributed KV cache.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(cache_app, name="cache")
app.add_typer(dashboards_app, name="dashboards")
app.add_typer(model_app, name="model")
app.command("up")(up)
app.command("down")(down)
app.command("health")(health)
app.command("status")(status_command)
app.command("stats")(stats_command)
app.command("monitor")(monitor_command)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
