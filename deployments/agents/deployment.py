"""The `agents` Serve application: one ingress deployment around the FastAPI app.

The app is built per replica (`__serve_build_asgi_app__`) from the
application args, so each replica owns its database pool, run heartbeat,
LLM client and service handles. `ServiceIngress` adds ``handle_request``
(and the streaming variant) so the gateway can call the same routes through
a handle. The replica only waits on the LLM, the other services and the
database, so it asks for no CPU.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.agents.app import create_app
from deployments.agents.runtime import AgentsAppConfig
from deployments.common import ServiceIngress
from deployments.common.grpc_limits import GRPC_ENV
from cache_actors.actors.worker_logs import route_package_logs


@serve.deployment(name="Agents", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": GRPC_ENV}},
                  max_ongoing_requests=64)
@serve.ingress()
class AgentsIngress(ServiceIngress):
    """Ingress of the agents application."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self._config = AgentsAppConfig.model_validate(config or {})

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return create_app(self._config)


def build_agents(args: dict[str, Any] | None = None) -> Application:
    """Application builder (serve_config.yaml ``import_path: deployments.agents:build_agents``)."""
    AgentsAppConfig.model_validate(args or {})  # a bad config fails at deploy time, not in every replica
    return AgentsIngress.bind(dict(args or {}))
