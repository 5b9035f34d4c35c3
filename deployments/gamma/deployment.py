"""The `gamma` Serve application: one ingress deployment around the FastAPI app.

The app is built per replica (`__serve_build_asgi_app__`) from the
application args, so each replica owns its database pool, LLM client and
lease heartbeat. `ServiceIngress` adds ``handle_request`` so the gateway can
call the same routes through a handle. The cards are written by the
``llm_app`` application (default ``llm``); the replica itself only waits on
it and renders exports, so it asks for no CPU, like the other services.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.common import ServiceIngress
from deployments.common.grpc_limits import GRPC_ENV
from deployments.gamma.app import create_app
from deployments.gamma.runtime import GammaAppConfig
from cache_actors.actors.worker_logs import route_package_logs


@serve.deployment(name="Gamma", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": GRPC_ENV}},
                  max_ongoing_requests=64)
@serve.ingress()
class GammaIngress(ServiceIngress):
    """Ingress of the gamma application."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self._config = GammaAppConfig.model_validate(config or {})

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return create_app(self._config)


def build_gamma(args: dict[str, Any] | None = None) -> Application:
    """Application builder (serve_config.yaml ``import_path: deployments.gamma:build_gamma``)."""
    GammaAppConfig.model_validate(args or {})  # a bad config fails at deploy time, not in every replica
    return GammaIngress.bind(dict(args or {}))
