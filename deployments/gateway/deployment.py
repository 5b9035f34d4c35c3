"""The gateway as a Ray Serve deployment (FastAPI ingress, app built per replica)."""

from __future__ import annotations

import asyncio

from typing import Any

from ray import serve

from business_modules.settings import load_settings
from deployments.common.grpc_limits import GRPC_ENV
from deployments.gateway.app import create_app
from deployments.gateway.configured import check_expected
from deployments.gateway.llm_front import ServeOpenAIFront
from deployments.gateway.services import ServeServiceClient, ServiceRegistry
from deployments.gateway.state import GatewayState
from cache_actors.actors.worker_logs import route_package_logs


# NOTE: the gateway's code is all async (hashing and SQLite run in threads), so its
# replicas run user code and the handle router on the replica's own event loop:
# two thread hops fewer per request (measured with `blatam bench gateway`).
# It also receives services' answers over gRPC, larger than Serve's default cap (deployments.common.grpc_limits).
# Nice 0, not Ray's 15: every request waits on it, and at 15 it got ~3% of a core while the model decoded.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
               "RAY_worker_niceness": "0", **GRPC_ENV}


@serve.deployment(
    name="Gateway",
    ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}},
    max_ongoing_requests=200,
)
@serve.ingress()
class Gateway:
    """Authenticates, rate-limits and forwards requests to the service applications.

    Args:
        settings: overrides of `business_modules.settings.Settings` (Serve app
            args), on top of the replica's environment variables.
    """

    async def __init__(self, settings: dict[str, Any] | None = None):
        route_package_logs()
        resolved = load_settings(settings)
        registry = ServiceRegistry(resolved.gateway_services)
        check_expected(registry, resolved.gateway_expected_services)
        client = ServeServiceClient(registry, transport=resolved.gateway_handle_transport)
        self._state = await GatewayState.open(resolved, client, openai_front=ServeOpenAIFront(client))
        # Read Serve's status once now: the first serve.status() of a process is slow, and the
        # first /health after start-up must not wait for it (it would report "unknown").
        self._warmup = asyncio.ensure_future(client.app_states())

    def __serve_build_asgi_app__(self):
        # NOTE: Serve's proxy already echoes X-Request-ID on every response.
        return create_app(self._state, echo_request_id=False)
