"""`blatam up` says it is up once the gateway's ``/health`` says healthy, not only once Serve runs every app.

Why: Serve reports an application RUNNING when its replicas are, but the
gateway's first ``/health`` then probes each service through a handle it
has never used (the handle learns its replicas from the controller on the
first call), and on 2 busy cores those first probes ran past the 2-s
probe timeout: the first ``/health`` after the ready line read
``degraded`` ("no answer within 2 s" from three services) and ``healthy`` a
few seconds later. Polling it here makes those first calls before the user
does, and the ready line true.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx

HEALTH_WAIT_S = 60.0
"""How long `blatam up` waits for a healthy ``/health`` before it says it is up anyway, with what was not."""
POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class HealthWait:
    """What the last ``/health`` said."""

    status: str
    """``healthy``, ``degraded``, ``unhealthy``, or ``unanswered`` (no JSON answer at all)."""
    waited_s: float
    not_healthy: tuple[str, ...] = ()
    """The components that were not healthy (``services.bul``, ``cache``, ``database`` ...)."""

    def note(self) -> str | None:
        """The line for the ready text when the wait ended without a healthy answer."""
        if self.status == "healthy":
            return None
        which = f": {', '.join(self.not_healthy)}" if self.not_healthy else ""
        return f"Health: GET /health still said {self.status} after {self.waited_s:.0f} s{which}"


def unhealthy_parts(report: dict) -> tuple[str, ...]:
    """The components of a gateway ``/health`` report that are neither healthy nor deliberately off."""
    parts = [f"services.{name}" for name, part in sorted((report.get("services") or {}).items())
             if isinstance(part, dict) and part.get("status") != "healthy"]
    for name in ("cache", "database", "redis"):
        part = report.get(name)
        if isinstance(part, dict) and part.get("status") not in ("healthy", "disabled"):
            parts.append(name)
    return tuple(parts)


def wait_healthy(base_url: str, *, timeout_s: float = HEALTH_WAIT_S, stop: threading.Event | None = None,
                 poll_s: float = POLL_S) -> HealthWait:
    """Poll ``GET base_url/health`` until it says healthy, ``timeout_s`` passes or ``stop`` is set.

    A gateway that has no ``/health`` (404: a deploy file of other apps) ends
    the wait at once: there is nothing to warm.
    """
    started = time.monotonic()
    stop = stop or threading.Event()
    with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0)) as client:
        while True:
            waited = time.monotonic() - started
            status, parts = "unanswered", ()
            try:
                response = client.get(f"{base_url}/health")
                if response.status_code == 404:
                    return HealthWait("healthy", waited)
                report = response.json()
                if isinstance(report, dict):
                    status, parts = str(report.get("status", "unanswered")), unhealthy_parts(report)
            except (httpx.HTTPError, ValueError):
                pass  # no answer, or not JSON: "unanswered"
            if status == "healthy" or waited >= timeout_s or stop.is_set():
                return HealthWait(status, time.monotonic() - started, parts)
            stop.wait(poll_s)
