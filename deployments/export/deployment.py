"""The `export` Serve application: one ingress deployment around the FastAPI app.

The app is built per replica (`__serve_build_asgi_app__`) from the
application args, so each replica owns its database pool, result folder and
job heartbeat. `ServiceIngress` adds ``handle_request`` so the gateway can
call the same routes through a handle.

Renders run in a worker thread of the replica (one at a time by default,
``EXPORT_MAX_CONCURRENT_RENDERS``), so ``num_cpus=1`` would be the honest
request; it stays 0 here, like the other services, so the app fits the
2-CPU test cluster. Set it per deployment in serve_config.yaml.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.common import ServiceIngress
from deployments.export.app import create_app
from deployments.export.runtime import ExportAppConfig
from deployments.common.grpc_limits import GRPC_ENV
from cache_actors.actors.worker_logs import route_package_logs


@serve.deployment(name="Export", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": GRPC_ENV}}, max_ongoing_requests=32)
@serve.ingress()
class ExportIngress(ServiceIngress):
    """Ingress of the export application."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self._config = ExportAppConfig.model_validate(config or {})

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return create_app(self._config)


def build_export(args: dict[str, Any] | None = None) -> Application:
    """Application builder (serve_config.yaml ``import_path: deployments.export:build_export``)."""
    ExportAppConfig.model_validate(args or {})  # a bad config fails at deploy time, not in every replica
    return ExportIngress.bind(dict(args or {}))
