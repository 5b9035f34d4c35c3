"""The `redundancy` Serve application: one ingress deployment around the FastAPI app.

The app is built per replica (`__serve_build_asgi_app__`) from the
application args, so each replica owns its database pool and its model.
`ServiceIngress` adds ``handle_request`` so the gateway can call the same
routes through a handle.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.common import ServiceIngress
from deployments.redundancy.app import create_app
from deployments.redundancy.runtime import RedundancyAppConfig
from deployments.common.grpc_limits import GRPC_ENV
from cache_actors.actors.worker_logs import route_package_logs


@serve.deployment(name="Redundancy", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": GRPC_ENV}}, max_ongoing_requests=16)
@serve.ingress()
class RedundancyIngress(ServiceIngress):
    """Ingress of the redundancy application."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self._config = RedundancyAppConfig.model_validate(config or {})

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return create_app(self._config)


def build_redundancy(args: dict[str, Any] | None = None) -> Application:
    """Application builder (serve_config.yaml ``import_path: deployments.redundancy:build_redundancy``)."""
    return RedundancyIngress.bind(dict(args or {}))
