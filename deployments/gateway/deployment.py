"""The gateway as a Ray Serve deployment (FastAPI ingress, app built per replica)."""

from __future__ import annotations

from typing import Any

from ray import serve

from business_modules.settings import load_settings
from deployments.gateway.app import create_app
from deployments.gateway.services import ServeServiceClient, ServiceRegistry
from deployments.gateway.state import GatewayState


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress()
class Gateway:
    """Authenticates, rate-limits and forwards requests to the service applications.

    Args:
        settings: overrides of `business_modules.settings.Settings` (Serve app
            args), on top of the replica's environment variables.
    """

    async def __init__(self, settings: dict[str, Any] | None = None):
        resolved = load_settings(settings)
        client = ServeServiceClient(ServiceRegistry(resolved.gateway_services))
        self._state = await GatewayState.open(resolved, client)

    def __serve_build_asgi_app__(self):
        # NOTE: Serve's proxy already echoes X-Request-ID on every response.
        return create_app(self._state, echo_request_id=False)
