"""`blatam health`: the gateway's ``/health`` report as a table and an exit code.

For operators and probes (cron, a load balancer's check, CI smoke tests): the
exit code is 0 when the system is healthy, 1 when degraded (a configured
service, the cache or Redis is not healthy; requests still pass) and 2 when
unhealthy or unreachable, so a script can tell "look at it" from "it is
down". The table lists the services the gateway is configured with (by
default, those deployed on Serve; the caption says which rule applied).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

EXIT_CODES = {"healthy": 0, "degraded": 1}
"""Overall status -> exit code; anything else (unhealthy, unreachable, unreadable) is 2."""

_STYLES = {"healthy": "green", "degraded": "yellow", "unhealthy": "red", "unknown": "yellow",
           "deploying": "yellow", "disabled": "dim", "not_deployed": "dim"}


def health_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(component, status, detail)`` for every part of a ``/health`` report, services first."""
    rows = [(f"service {name}", part.get("status", "?"), _detail(part))
            for name, part in sorted(report.get("services", {}).items())]
    for name in ("cache", "database", "redis"):
        if name in report:
            rows.append((name, report[name].get("status", "?"), _detail(report[name])))
    return rows


_SERVICES_FROM = {"serve": "services: as deployed on Serve",
                  "settings": "services: as listed in GATEWAY_EXPECTED_SERVICES"}


def services_caption(report: dict[str, Any]) -> str | None:
    """Which services the report covers (the gateway's ``services_from``), for the table's caption."""
    source = report.get("services_from")
    return _SERVICES_FROM.get(source, f"services: {source}") if source else None


def _detail(part: dict[str, Any]) -> str:
    bits = []
    if "latency_ms" in part:
        bits.append(f"{part['latency_ms']:.1f} ms")
    for key in ("backend", "rate_limits", "app", "detail"):
        if part.get(key):
            bits.append(f"{key}={part[key]}" if key != "detail" else str(part[key]))
    return ", ".join(bits)


def fetch_health(url: str, timeout_s: float) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, report)`` of ``GET {url}/health``; raises `httpx.HTTPError` or ValueError."""
    import httpx  # here, not at the top: `blatam --help` and the other commands need not load it

    response = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    report = response.json()
    if not isinstance(report, dict) or "status" not in report:
        raise ValueError(f"not a health report (HTTP {response.status_code})")
    return response.status_code, report


def health(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The gateway's base URL."),
    timeout_s: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for the answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw report instead of a table."),
) -> None:
    """Check the running system through the gateway's /health (exit 0 healthy, 1 degraded, 2 down)."""
    import httpx

    console = Console()
    try:
        _, report = fetch_health(url, timeout_s)
    except (httpx.HTTPError, ValueError) as exc:
        console.print(f"[red]unreachable[/red]: {url}/health: {type(exc).__name__}: {exc}".rstrip(": "))
        raise typer.Exit(2) from None
    status = str(report["status"])
    if as_json:
        console.print_json(json.dumps(report))
    else:
        table = Table(title=f"{url} — {status}", caption=services_caption(report))
        for column in ("component", "status", "detail"):
            table.add_column(column)
        for component, part_status, detail in health_rows(report):
            style = _STYLES.get(part_status, "")
            table.add_row(component, f"[{style}]{part_status}[/{style}]" if style else part_status, detail)
        console.print(table)
    raise typer.Exit(EXIT_CODES.get(status, 2))
