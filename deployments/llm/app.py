"""The `llm` Serve application: the model replicas and their OpenAI-compatible API.

Two shapes (``openai_front``; ``auto`` picks the first, except under HAProxy
with cache-aware routing: `openai_front`):

- ``replica`` (the default): one deployment, ``LLMServer`` =
  `deployments.llm.front.LLMServerFront`, the model replicas serving the API
  themselves; HTTP reaches the model's process with no Serve hop between.
- ``ingress``: ``LLMIngress``, the FastAPI app of
  `deployments.llm.openai.routes` over the ``LLMServer`` handle, in front of
  bare replicas (`deployments.llm.server.LLMServer`). Serve routes a handle
  call to a replica with a custom router (an HTTP request reaches the
  ingress as ASGI arguments, not a prompt), so here every request is routed
  cache-aware, for one hop more.

The ``LLMServer`` replicas are routed by `deployments.llm.router.CacheAwareRouter`
when ``routing: affinity`` (the default), or by Serve's power of two choices.
In serve_config.yaml the app has no route: the gateway serves ``/v1`` itself,
with the same API built from ``openai_config`` over the ``LLMServer`` handle
(`deployments.gateway.llm_front`). Deployed with a route prefix (tests,
benchmarks, a tool inside the cluster) the app answers directly; its
ingress also gives the gateway its OpenAPI schema through `ServiceIngress`.

Services call ``serve.get_deployment_handle("LLMServer", app_name="llm")``
and its ``generate`` / ``generate_stream`` methods.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from cache_actors.actors.worker_logs import route_package_logs
from deployments.common import ServiceIngress
from deployments.common.grpc_limits import GRPC_ENV
from deployments.llm.front import LLMServerFront
from deployments.llm.openai.over_handle import openai_app_over
from deployments.llm.openai_options import openai_options
from deployments.llm.server import LLMServer
from deployments.llm.settings import CONTROLLER_HAPROXY_ENV, HAPROXY_ENV, LLMSettings

CACHE_AWARE_ROUTER = "deployments.llm.router:CacheAwareRouter"


@serve.deployment(name="LLMIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress()
class LLMIngress(ServiceIngress):
    """HTTP front of the LLM: validates, fans out ``n``, streams server-sent events."""

    def __init__(self, server: DeploymentHandle, args: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self._server = server
        self._settings = LLMSettings.model_validate(args or {})

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook
        return openai_app_over(self._server, openai_options(self._settings))

    async def openai_config(self) -> dict[str, Any]:
        """What the gateway needs to serve this app's OpenAI API itself (`deployments.gateway.llm_front`)."""
        return openai_options(self._settings)


def router_config(settings: LLMSettings) -> RequestRouterConfig:
    """Cache-aware routing (``affinity``) or Serve's default power of two choices (``pow2``)."""
    if settings.routing == "pow2":
        return RequestRouterConfig(request_routing_stats_period_s=settings.routing_stats_period_s)
    return RequestRouterConfig(
        request_router_class=CACHE_AWARE_ROUTER,
        request_router_kwargs=dict(settings.router),
        request_routing_stats_period_s=settings.routing_stats_period_s,
    )


def openai_front(settings: LLMSettings, *, haproxy: bool | None = None) -> Literal["replica", "ingress"]:
    """The app's shape for ``settings.openai_front`` (see the module docstring).

    Under HAProxy no app's ingress may have a custom request router (Ray 2.60 refuses the deploy: HAProxy
    picks the replica of an HTTP request, so the router would be ignored), so ``auto`` keeps the cache-aware router on a
    separate `LLMIngress` there, and an explicit ``replica`` with it is refused here, naming the way out.
    """
    if haproxy is None:
        haproxy = "1" in (os.environ.get(HAPROXY_ENV), os.environ.get(CONTROLLER_HAPROXY_ENV))
    conflict = haproxy and settings.routing == "affinity"
    if settings.openai_front == "auto":
        return "ingress" if conflict else "replica"
    if settings.openai_front == "replica" and conflict:
        raise ValueError("openai_front: replica with routing: affinity cannot run under HAProxy: Ray 2.60 allows no "
                         "custom request router on an HTTP ingress there. Use openai_front: auto or ingress, "
                         "or routing: pow2.")
    return settings.openai_front


def build_llm(args: dict[str, Any] | None = None) -> Application:
    """Application builder (serve_config.yaml ``import_path: deployments.llm:build_llm``).

    ``args`` are `LLMSettings` fields; ``num_replicas`` (default 1) or
    ``autoscaling_config`` (Serve's), and ``num_cpus`` (CPUs each server
    replica reserves, hence its torch threads: `deployments.llm.threads`;
    default 0, so one thread) size the server here so a benchmark or a test
    can do it without a config file. A deploy file's ``deployments: - name:
    LLMServer`` options replace them.
    """
    args = dict(args or {})
    replicas = int(args.pop("num_replicas", 1))
    autoscaling = args.pop("autoscaling_config", None)
    options: dict[str, Any] = {"autoscaling_config": dict(autoscaling)} if autoscaling else {"num_replicas": replicas}
    num_cpus = args.pop("num_cpus", None)
    settings = LLMSettings.model_validate(args)
    options["request_router_config"] = router_config(settings)
    if num_cpus is not None:
        options["ray_actor_options"] = {"num_cpus": float(num_cpus)}
    if openai_front(settings) == "replica":
        return LLMServerFront.options(**options).bind(args)
    return LLMIngress.options(**ingress_env()).bind(LLMServer.options(**options).bind(args), args)


def ingress_env() -> dict[str, Any]:
    """`LLMIngress`'s own runtime_env: `GRPC_ENV` (large answers from the replicas), unless the app's has it.

    A deployment with a runtime_env in its code gets none of the app's (Serve applies that one only to
    deployments without, or to those the deploy file lists, and the file cannot list a deployment that only
    one shape has): behind HAProxy the ingress then lost serve_config.yaml's flags and opened an HTTP port of
    its own. The builder runs in the app's environment, so what it already has needs no runtime_env.
    """
    missing = {name: value for name, value in GRPC_ENV.items() if os.environ.get(name) != value}
    if not missing:
        return {}
    return {"ray_actor_options": {**LLMIngress.ray_actor_options, "runtime_env": {"env_vars": missing}}}
