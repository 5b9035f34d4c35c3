"""The HTTP side of `blatam bench agents`: a corpus for the tenant, then runs submitted, approved and followed
through the gateway with an API key, as a client of the service would.

Runs are followed with one ``GET /runs`` per poll (statuses only, whatever the
number of runs), not one request per run: on two cores the bench's own
polling would otherwise take CPU from what it measures. Each run's steps are
read once, after it ended. A run that stops in ``awaiting_approval`` (a tool
with side effects: a BUL document, an export) is approved, so it goes on and
the call is made, as a person using the API would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the workload imports the agents package (a second at `blatam` start): only when it runs
    from scripts.bench.agents_workload import RunSpec

CORPUS = "bench-notes"
NOTES = (
    ("q3-review", "Bakery sales in Lyon grew 12% in Q3; croissants and sourdough sold out by noon every day."),
    ("pricing", "Pricing memo: raise the sourdough price by 5% and bundle coffee with pastries on weekdays."),
    ("hiring", "We hire bakers who care about quality and customers; every new hire shadows a senior baker."),
    ("logistics", "Deliveries to cafes leave at 6am; late trucks cost us two wholesale customers last year."),
)
"""The tenant's documents, for the capabilities that search or check against a corpus."""

FINISHED = ("completed", "failed", "cancelled")
RUNS = "/api/v1/agents/runs"


@dataclass(frozen=True, slots=True)
class DriveResult:
    """Every run as ``GET /runs/{id}`` shows it after its end, the wall time of the workload, the approvals
    given and the runs that had not ended when the bench stopped waiting."""

    runs: list[dict[str, Any]]
    wall_s: float
    approvals: int
    unfinished: int


def seed_corpus(http: Any, key: dict[str, str]) -> None:
    """The corpus `NOTES` of the API key's tenant, through the gateway (the redundancy app)."""
    created = http.post("/api/v1/redundancy/corpora", headers=key, json={"name": CORPUS})
    if created.status_code != 201:
        raise RuntimeError(f"creating the corpus answered {created.status_code}: {created.text[:300]}")
    added = http.post(f"/api/v1/redundancy/corpora/{CORPUS}/documents", headers=key,
                      json={"documents": [{"name": name, "text": text} for name, text in NOTES]})
    if added.status_code != 201:
        raise RuntimeError(f"adding the corpus' documents answered {added.status_code}: {added.text[:300]}")


def submit(http: Any, key: dict[str, str], spec: RunSpec) -> str:
    """Start one run; its id."""
    response = http.post(spec.path, headers=key, json=spec.body)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"executing {spec.agent_id}/{spec.capability} answered {response.status_code}: "
                           f"{response.text[:300]}")
    return response.json()["run_id"]


def approve(http: Any, key: dict[str, str], run_id: str) -> bool:
    """Approve the call a run waits on; False when it no longer waits (409: its state moved on meanwhile)."""
    response = http.post(f"{RUNS}/{run_id}/approve", headers=key)
    if response.status_code == 409:
        return False
    if response.status_code != 200:
        raise RuntimeError(f"approving run {run_id} answered {response.status_code}: {response.text[:300]}")
    return True


def statuses(http: Any, key: dict[str, str], limit: int) -> dict[str, str]:
    """Run id -> status of the tenant's newest ``limit`` runs, in one request."""
    response = http.get(RUNS, headers=key, params={"limit": limit})
    if response.status_code != 200:
        raise RuntimeError(f"listing runs answered {response.status_code}: {response.text[:300]}")
    return {run["run_id"]: run["status"] for run in response.json()["runs"]}


def drive(http: Any, key: dict[str, str], specs: Sequence[RunSpec], *, timeout_s: float,
          poll_s: float = 0.5) -> DriveResult:
    """Submit every run at once, approve what waits, until all ended or ``timeout_s``; then read every run.

    The wall time runs from the first submission to the poll that saw the last run end.
    """
    started = time.perf_counter()
    ids = [submit(http, key, spec) for spec in specs]
    pending, approvals = set(ids), 0
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for run_id, status in statuses(http, key, limit=max(len(ids), 1)).items():
            if run_id not in pending:
                continue
            if status in FINISHED:
                pending.discard(run_id)
            elif status == "awaiting_approval":
                approvals += approve(http, key, run_id)
        if pending:
            time.sleep(poll_s)
    wall = time.perf_counter() - started
    runs = []
    for run_id in ids:
        response = http.get(f"{RUNS}/{run_id}", headers=key)
        if response.status_code != 200:
            raise RuntimeError(f"reading run {run_id} answered {response.status_code}: {response.text[:300]}")
        runs.append(response.json())
    return DriveResult(runs=runs, wall_s=wall, approvals=approvals, unfinished=len(pending))
