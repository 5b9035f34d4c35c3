"""The dashboards shipped in ``dashboards/*.json`` and every query their panels run.

One reader for everything that needs the dashboards (the push command, the list
command, the tests that run each query on a real Prometheus), so a panel added to
a JSON file is pushed, listed and tested without touching code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).parent / "dashboards"

# Every metric the dashboards read is exported by Ray, which prefixes names with ``ray_``.
_METRIC_NAME = re.compile(r"\bray_[A-Za-z0-9_:]+")
# Grafana's interval variables and the value a plain Prometheus query uses instead.
GRAFANA_INTERVALS = ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}")


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel: what Grafana sends to Prometheus."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str

    @property
    def metric_names(self) -> list[str]:
        return metric_names(self.expr)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    """The dashboard models, in file-name order."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboard JSON in {directory}")
    return [json.loads(path.read_text()) for path in files]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries(dashboards: list[dict[str, Any]] | None = None) -> list[PanelQuery]:
    """Every (dashboard, panel, query) of the given dashboards (default: the shipped ones)."""
    queries = []
    for dashboard in load_dashboards() if dashboards is None else dashboards:
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if "expr" in target:
                    queries.append(PanelQuery(dashboard["title"], panel["title"], target.get("refId", ""),
                                              target["expr"], target.get("legendFormat", "")))
    return queries


def metric_names(expr: str) -> list[str]:
    """The Ray-exported metric names a query reads, in order of first use."""
    return list(dict.fromkeys(_METRIC_NAME.findall(expr)))


def prometheus_expr(expr: str, interval: str = "1m") -> str:
    """The query as Grafana would send it: its interval variables replaced by ``interval``."""
    for variable in GRAFANA_INTERVALS:
        expr = expr.replace(variable, interval)
    return expr
