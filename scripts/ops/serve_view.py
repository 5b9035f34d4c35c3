"""The Serve applications of the joined cluster: status, deployments, replicas per state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DeploymentView:
    name: str
    status: str
    replicas: dict[str, int]
    """Replica state (RUNNING, STARTING, ...) -> count."""
    message: str = ""


@dataclass(frozen=True, slots=True)
class AppView:
    name: str
    status: str
    deployments: list[DeploymentView] = field(default_factory=list)
    message: str = ""


def _text(value: Any) -> str:
    """An enum's value (Serve's statuses are str enums), anything else as text."""
    return str(getattr(value, "value", value))


def serve_view() -> tuple[list[AppView], str]:
    """(applications, "") or ([], why) when Serve does not run on the cluster."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        status = serve.status()
    except RayServeException as exc:
        return [], str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    apps = []
    for name, app in sorted(status.applications.items()):
        deployments = [DeploymentView(d_name, _text(d.status), {_text(k): int(v) for k, v in d.replica_states.items()},
                                      d.message or "")
                       for d_name, d in sorted(app.deployments.items())]
        apps.append(AppView(name, _text(app.status), deployments, app.message or ""))
    return apps, ""


def apps_json(apps: list[AppView]) -> list[dict[str, Any]]:
    return [asdict(a) for a in apps]
