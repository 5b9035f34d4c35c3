"""The `llm` Serve application: an OpenAI-compatible ingress in front of the `LLMServer` replicas.

Two deployments, because Serve routes a request to a replica of the
*downstream* deployment with a custom router (the ingress gets ASGI
arguments, not prompts):

- ``LLMIngress``: the FastAPI app of `deployments.llm.openai.routes`. In
  serve_config.yaml it has no route: the gateway serves ``/v1`` itself,
  with the same app built from `openai_config` over the ``LLMServer``
  handle (`deployments.gateway.llm_front`). Deployed with a route prefix
  (tests, benchmarks, a tool inside the cluster) it answers directly; it
  also gives the gateway its OpenAPI schema through `ServiceIngress`.
- ``LLMServer``: the model replicas (continuous batching, KV shard of their
  device), routed by `deployments.llm.router.CacheAwareRouter` when
  ``routing: affinity`` (the default), or by Serve's power of two choices.

Services call ``serve.get_deployment_handle("LLMServer", app_name="llm")``
and its ``generate`` / ``generate_stream`` methods.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from cache_actors.engine.model_runner import model_identity
from deployments.common import ServiceIngress
from deployments.llm.openai.over_handle import openai_app_over
from deployments.llm.server import LLMServer
from deployments.llm.settings import LLMSettings
from deployments.common.grpc_limits import GRPC_ENV
from cache_actors.actors.worker_logs import route_package_logs

CACHE_AWARE_ROUTER = "deployments.llm.router:CacheAwareRouter"


@serve.deployment(name="LLMIngress", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": GRPC_ENV}}, max_ongoing_requests=1024)
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


def openai_options(settings: LLMSettings) -> dict[str, Any]:
    """The `build_openai_app` options these settings give: the same wherever the app is built."""
    model_id, context = model_identity(settings.model_path)
    return {"model_id": settings.served_model_name or model_id, "max_context": min(context, settings.max_model_len),
            "max_tokens_limit": settings.max_tokens_limit, "model_info": model_info(settings),
            "version": blatam_version()}


def blatam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blatam")
    except PackageNotFoundError:
        return "unknown"


DEMO_NOTE = ("the built-in demo model (random weights): its answers are not readable text; "
             "`blatam up --model smollm2` or `model_path` serves a real model")


def model_info(settings: LLMSettings) -> dict[str, Any]:
    """What kind of model is served and why, for /health and /v1/models."""
    kind = "demo" if settings.model_path is None else "huggingface"
    note = settings.model_note or (DEMO_NOTE if kind == "demo" else None)
    return {"kind": kind, **({"note": note} if note else {})}


def router_config(settings: LLMSettings) -> RequestRouterConfig:
    """Cache-aware routing (``affinity``) or Serve's default power of two choices (``pow2``)."""
    if settings.routing == "pow2":
        return RequestRouterConfig(request_routing_stats_period_s=settings.routing_stats_period_s)
    return RequestRouterConfig(
        request_router_class=CACHE_AWARE_ROUTER,
        request_router_kwargs=dict(settings.router),
        request_routing_stats_period_s=settings.routing_stats_period_s,
    )


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
    if "num_cpus" in args:
        options["ray_actor_options"] = {"num_cpus": float(args.pop("num_cpus"))}
    settings = LLMSettings.model_validate(args)
    server = LLMServer.options(**options, request_router_config=router_config(settings)).bind(args)
    return LLMIngress.bind(server, args)
