"""Provision the dashboards into a Grafana through its HTTP API (grafana-client).

Idempotent: the folder is found by title or created, each dashboard is upserted by
its uid with ``overwrite``, and the optional Prometheus datasource is created or
updated by name. Every call has a timeout; every failure becomes one
`GrafanaPushError` whose message names what went wrong, for a one-line CLI error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from scripts.observability.catalog import load_dashboards

if TYPE_CHECKING:  # grafana_client loads on the first call, so `blatam --help` does not pay for it
    from grafana_client import GrafanaApi

DEFAULT_FOLDER = "Blatam"
DEFAULT_DATASOURCE = "Prometheus"
DEFAULT_TIMEOUT_S = 10.0

T = TypeVar("T")


class GrafanaPushError(RuntimeError):
    """A push that could not complete; the message is meant for the operator as is."""


@dataclass
class PushResult:
    folder_uid: str
    dashboards: list[str] = field(default_factory=list)  # uids, in push order
    datasource: str | None = None  # "created" / "updated" / None when not asked


def connect(url: str, token: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> GrafanaApi:
    """A client for ``url`` (``http://host:3000``, optionally with ``user:pass@``) with a bearer token."""
    if not url.startswith(("http://", "https://")):
        raise GrafanaPushError(f"Grafana URL must start with http:// or https://, got {url!r}")
    from grafana_client import GrafanaApi

    return GrafanaApi.from_url(url, credential=token or None, timeout=timeout_s)


def _call(what: str, url: str, call: Callable[[], T]) -> T:
    """Run one API call, turning every failure into a one-line `GrafanaPushError`."""
    from grafana_client.client import GrafanaException

    try:
        return call()
    except (GrafanaException, OSError) as exc:
        raise _failure(what, url, exc) from exc


def _failure(what: str, url: str, exc: Exception) -> GrafanaPushError:
    """The operator's message for a failed call (no traceback, one line)."""
    from grafana_client.client import GrafanaException, GrafanaTimeoutError, GrafanaUnauthorizedError

    if isinstance(exc, GrafanaUnauthorizedError):
        return GrafanaPushError(f"Grafana at {url} refused the credentials (401) while trying to {what}: check --token")
    if isinstance(exc, GrafanaTimeoutError):
        return GrafanaPushError(f"Grafana at {url} did not answer in time while trying to {what}")
    if isinstance(exc, GrafanaException):
        status = f" ({exc.status_code})" if exc.status_code else ""
        return GrafanaPushError(f"Grafana at {url} failed to {what}{status}: {_one_line(exc.message)}")
    # connection refused, DNS, TLS: niquests' errors are OSErrors
    return GrafanaPushError(f"cannot reach Grafana at {url} to {what}: {_one_line(exc)}")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:300]


def ensure_folder(api: GrafanaApi, url: str, title: str) -> str:
    """The uid of the folder called ``title``, created when missing."""
    folders = _call("list folders", url, api.folder.get_all_folders)
    for folder in folders or []:
        if folder.get("title") == title:
            return folder["uid"]
    created = _call(f"create folder {title!r}", url, lambda: api.folder.create_folder(title))
    return created["uid"]


def upsert_dashboard(api: GrafanaApi, url: str, dashboard: dict[str, Any], folder_uid: str) -> str:
    """Create or replace the dashboard with the same uid; returns the uid."""
    model = {**dashboard, "id": None}  # Grafana matches on uid; a stale id would conflict
    payload = {"dashboard": model, "folderUid": folder_uid, "overwrite": True,
               "message": "blatam dashboards push"}
    _call(f"save dashboard {dashboard['title']!r}", url, lambda: api.dashboard.update_dashboard(payload))
    return dashboard["uid"]


def upsert_prometheus_datasource(api: GrafanaApi, url: str, prometheus_url: str, name: str = DEFAULT_DATASOURCE) -> str:
    """Create the Prometheus datasource ``name`` or point the existing one at ``prometheus_url``."""
    if not prometheus_url.startswith(("http://", "https://")):
        raise GrafanaPushError(f"Prometheus URL must start with http:// or https://, got {prometheus_url!r}")
    from grafana_client.client import GrafanaClientError, GrafanaException

    body = {"name": name, "type": "prometheus", "access": "proxy", "url": prometheus_url,
            "jsonData": {"httpMethod": "POST"}}
    try:
        existing = api.datasource.get_datasource_by_name(name)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise _failure(f"look up datasource {name!r}", url, exc) from exc
        existing = None
    except (GrafanaException, OSError) as exc:
        raise _failure(f"look up datasource {name!r}", url, exc) from exc
    if existing is None:
        _call(f"create datasource {name!r}", url, lambda: api.datasource.create_datasource(body))
        return "created"
    body = {**body, "uid": existing.get("uid")}
    _call(f"update datasource {name!r}", url, lambda: api.datasource.update_datasource(existing["id"], body))
    return "updated"


def push(url: str, token: str | None, *, folder: str = DEFAULT_FOLDER, prometheus_url: str | None = None,
         datasource_name: str = DEFAULT_DATASOURCE, timeout_s: float = DEFAULT_TIMEOUT_S,
         dashboards: list[dict[str, Any]] | None = None) -> PushResult:
    """Provision the datasource (when asked), the folder and every dashboard."""
    api = connect(url, token, timeout_s)
    result = PushResult(folder_uid="")
    if prometheus_url:
        result.datasource = upsert_prometheus_datasource(api, url, prometheus_url, datasource_name)
    result.folder_uid = ensure_folder(api, url, folder)
    for dashboard in load_dashboards() if dashboards is None else dashboards:
        result.dashboards.append(upsert_dashboard(api, url, dashboard, result.folder_uid))
    return result
