"""`blatam dashboards ...`: push the Grafana dashboards, list their queries, write a Prometheus config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from scripts.observability.catalog import load_dashboards, panel_queries
from scripts.observability.grafana import (
    DEFAULT_DATASOURCE,
    DEFAULT_FOLDER,
    DEFAULT_TIMEOUT_S,
    GrafanaPushError,
    push,
)
from scripts.observability.prometheus_config import RAY_SERVICE_DISCOVERY, prometheus_config

dashboards_app = typer.Typer(help="Grafana dashboards over the metrics Ray exports to Prometheus.", no_args_is_help=True)


@dashboards_app.command("push")
def push_command(
    grafana_url: str = typer.Option(..., "--grafana-url", envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://localhost:3000."),
    token: Optional[str] = typer.Option(None, "--token", envvar="GRAFANA_TOKEN", help="Grafana service-account token."),
    folder: str = typer.Option(DEFAULT_FOLDER, "--folder", help="Folder the dashboards go in (created when missing)."),
    prometheus_url: Optional[str] = typer.Option(
        None, "--prometheus-url", help="Also create or update a Prometheus datasource pointing here."),
    datasource_name: str = typer.Option(DEFAULT_DATASOURCE, "--datasource-name", help="Name of that datasource."),
    timeout_s: float = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", min=0.1, help="Seconds allowed for each API call."),
) -> None:
    """Create or update every Blatam dashboard in Grafana (idempotent)."""
    try:
        result = push(grafana_url, token, folder=folder, prometheus_url=prometheus_url,
                      datasource_name=datasource_name, timeout_s=timeout_s)
    except GrafanaPushError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    if result.datasource:
        typer.echo(f"datasource {datasource_name!r} {result.datasource} -> {prometheus_url}")
    typer.echo(f"pushed {len(result.dashboards)} dashboards to folder {folder!r}: {', '.join(result.dashboards)}")


@dashboards_app.command("list")
def list_command() -> None:
    """Print every dashboard, panel and Prometheus query."""
    table = Table(title="Blatam dashboards")
    for column in ("Dashboard", "Panel", "Ref", "Query"):
        table.add_column(column, overflow="fold")
    for query in panel_queries(load_dashboards()):
        table.add_row(query.dashboard, query.panel, query.ref_id, query.expr)
    Console().print(table)


@dashboards_app.command("prometheus-config")
def prometheus_config_command(
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: print it)."),
    service_discovery: Path = typer.Option(
        RAY_SERVICE_DISCOVERY, "--service-discovery", help="The node list Ray's head writes (file_sd JSON)."),
    scrape_interval: str = typer.Option("10s", "--scrape-interval", help="Prometheus duration, e.g. 10s."),
) -> None:
    """Write a prometheus.yml that scrapes every node of the Ray cluster."""
    try:
        text = prometheus_config(service_discovery, scrape_interval)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scrape-interval") from None
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {out}")
