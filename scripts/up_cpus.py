"""Fit the CPUs a deploy file's replicas reserve to the local cluster `blatam up` starts.

serve_config.yaml gives the LLM's model replicas 2 CPUs (their torch threads)
and every other replica none, so the whole file fits on 2 cores. On a smaller
cluster (``--num-cpus 1``, a 1-core VM) a replica that reserves more CPUs
than exist never starts, and `blatam up` would wait for it until its deploy
timeout. So the reservations are scaled down, all by the same factor, to what
the cluster has, and the user is told; a bigger cluster keeps the file's
numbers (raise ``num_cpus`` there to give the model more threads).

An autoscaling deployment's ``max_replicas`` is capped the same way: only
the replicas whose CPUs the cluster has beyond the minimum could ever start
(serve_config.yaml's LLMServer autoscales to 4; on 2 cores, 1 fits), and a
replica Serve keeps asking for but can never place only fills the logs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplicaCpus:
    """CPUs one deployment's replicas reserve, as the deploy file says and as deployed."""

    app: str
    deployment: str
    replicas: int
    asked: float
    given: float
    max_replicas: tuple[int, int] | None = None
    """(the deploy file's, what fits here) for an autoscaling deployment."""

    def describe(self) -> str:
        """One line for the start-up notes."""
        line = f"CPUs: {self.app}/{self.deployment} reserves {self.given:g} per replica"
        if self.given != self.asked:
            line += f" (the deploy file asks {self.asked:g}; this cluster has fewer)"
        return line

    def scaling_note(self) -> str:
        """``"; autoscales to at most N replicas ..."`` for an autoscaling deployment, else ``""``."""
        if self.max_replicas is None:
            return ""
        asked, fits = self.max_replicas
        note = f"; autoscales to at most {fits} replica{'s' if fits != 1 else ''}"
        return note + (f" (the deploy file says {asked}; this cluster fits {fits})" if fits != asked else "")


def _replicas(deployment: Any) -> int:
    """Replicas it starts with: ``num_replicas``, else its autoscaling minimum."""
    auto = getattr(deployment, "autoscaling_config", None)
    if isinstance(auto, dict) and "min_replicas" in auto:
        return max(1, int(auto["min_replicas"]))
    count = getattr(deployment, "num_replicas", 1)
    return count if isinstance(count, int) and count > 0 else 1


def _reserving(config: Any) -> list[tuple[str, Any]]:
    """``(app name, deployment schema)`` of every deployment whose replicas set a nonzero ``num_cpus``."""
    found = []
    for app in config.applications:
        for deployment in app.deployments or []:
            options = getattr(deployment, "ray_actor_options", None)
            if options is not None and getattr(options, "num_cpus", None):
                found.append((app.name, deployment))
    return found


def fit_replica_cpus(config: Any, cluster_cpus: float) -> list[ReplicaCpus]:
    """Scale the file's CPU reservations down (in place) so they fit ``cluster_cpus``; what each one got.

    Only replicas with an explicit ``num_cpus`` count; they are scaled by one
    factor, rounded down to hundredths (Ray takes fractions of a CPU).
    """
    reserving = _reserving(config)
    total = sum(float(d.ray_actor_options.num_cpus) * _replicas(d) for _, d in reserving)
    factor = min(1.0, cluster_cpus / total) if total else 1.0
    fitted = []
    for app, deployment in reserving:
        asked = float(deployment.ray_actor_options.num_cpus)
        given = asked if factor == 1.0 else max(int(asked * factor * 100) / 100, 0.01)
        deployment.ray_actor_options.num_cpus = given
        fitted.append(ReplicaCpus(app, deployment.name, _replicas(deployment), asked, given))
    spare = cluster_cpus - sum(r.given * r.replicas for r in fitted)
    for i, (_, deployment) in enumerate(reserving):
        cap = _cap_autoscaling(deployment, fitted[i].given, spare)
        if cap is not None:
            spare -= (cap[1] - fitted[i].replicas) * fitted[i].given
            fitted[i] = replace(fitted[i], max_replicas=cap)
    return fitted


def _cap_autoscaling(deployment: Any, given: float, spare_cpus: float) -> tuple[int, int] | None:
    """Cap an autoscaling deployment's ``max_replicas`` (in place) to its minimum plus what `spare_cpus` holds."""
    auto = getattr(deployment, "autoscaling_config", None)
    if not isinstance(auto, dict) or "max_replicas" not in auto:
        return None
    asked = int(auto["max_replicas"])
    low = int(auto.get("min_replicas", 1))
    extra = int(max(0.0, spare_cpus) // given) if given else asked
    fits = max(low, min(asked, low + extra))
    auto["max_replicas"] = fits
    return asked, fits
