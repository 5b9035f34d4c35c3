"""A prometheus.yml that scrapes a Ray cluster through the node list Ray's head keeps.

Ray's head writes ``/tmp/ray/prom_metrics_service_discovery.json`` (a Prometheus
file_sd target list of every node's metrics port) and refreshes it as nodes come and
go, so Prometheus follows the cluster without a static target list.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

RAY_SERVICE_DISCOVERY = Path("/tmp/ray/prom_metrics_service_discovery.json")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_SCRAPE_TIMEOUT_S = 10.0


def duration_s(duration: str) -> float:
    """Seconds in a Prometheus duration (``1m30s``); ValueError for anything else."""
    if not _DURATION.match(duration):
        raise ValueError(f"expected a Prometheus duration such as 10s or 1m, got {duration!r}")
    return sum(int(n) * _UNIT_S[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", duration))


def prometheus_config(service_discovery: Path = RAY_SERVICE_DISCOVERY, scrape_interval: str = "10s") -> str:
    """The YAML text of a config with one ``ray`` job reading ``service_discovery``."""
    if duration_s(scrape_interval) <= 0:
        raise ValueError("scrape interval must be positive")
    # Prometheus refuses a scrape timeout above the interval (its default timeout is 10s).
    timeout = scrape_interval if duration_s(scrape_interval) < DEFAULT_SCRAPE_TIMEOUT_S else "10s"
    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": timeout, "evaluation_interval": scrape_interval},
        "scrape_configs": [{
            "job_name": "ray",
            "file_sd_configs": [{"files": [str(service_discovery)], "refresh_interval": "30s"}],
        }],
    }
    header = ("# Scrapes every Ray node listed in the file Ray's head writes and refreshes.\n"
              "# Written by `blatam dashboards prometheus-config`.\n")
    return header + yaml.safe_dump(config, sort_keys=False)
