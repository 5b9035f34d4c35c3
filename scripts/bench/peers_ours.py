"""Our side of `blatam bench peers` when no ``--ours-url`` is given: the `llm` app as `blatam up` deploys it.

A private local Ray cluster (every CPU of this machine) and Serve on a free
port, then only the ``llm`` application of serve_config.yaml, deployed the
way `blatam up` deploys it (the same deploy call, so the file's
``deployments:`` options apply, CPU reservations fitted to the cluster:
`scripts.up_cpus`) with ``model_path`` set to the model asked for. So the
benchmark measures what a user runs, not a configuration of its own. Stopped
(Serve first, then Ray) when the block ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.bench.ports import free_loopback_port
from scripts.serve_stop import stop_serve
from scripts.up import DEFAULT_CONFIG, load_config, wait_until_running
from scripts.up_cpus import fit_replica_cpus
from scripts.up_ingress import DEFAULT_INGRESS, fit_ingress, fit_llm_front
from scripts.up_model import LLM_IMPORT_PATH, ModelChoice, apply_model

DEPLOY_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class OursServer:
    """Where the started app answers and what its model replica reports about itself."""

    base_url: str
    """Up to and including the app's route prefix (``/v1``)."""
    replica: dict[str, Any]
    """``torch_threads``, ``num_cpus``, ``dtype`` and ``shard`` of the replica (`LLMServer.get_stats`)."""
    ingress: str
    """What answers its HTTP (`scripts.up_ingress.fit_ingress`'s note)."""


def llm_only(config: Any, model_path: str | None, dtype: str | None = None) -> Any:
    """The deploy file reduced to its ``llm`` application, serving ``model_path`` (None: the demo model).

    ``dtype`` replaces the file's (``auto`` there: bf16 on a CPU with AMX), so
    ours computes in the dtype the peer was started with; None keeps the file's.
    """
    apps = [app for app in config.applications if app.import_path == LLM_IMPORT_PATH]
    if not apps:
        raise ValueError("the deploy file has no llm application")
    config.applications = apps[:1]
    # The shipped file gives the llm app no route (only the gateway is public); measured alone, as a peer
    # server is, it answers on its own /v1 like vLLM's.
    config.applications[0].route_prefix = config.applications[0].route_prefix or "/v1"
    apply_model(config, ModelChoice(model_path, None if model_path else "blatam bench peers: the demo model"))
    if dtype is not None:
        args = dict(config.applications[0].args or {})
        args["cache"] = {**(args.get("cache") or {}), "dtype": dtype}
        config.applications[0].args = args
    return config


@contextmanager
def ours_llm(model_path: str | None, *, dtype: str | None = None, config_path: Path = DEFAULT_CONFIG,
             num_cpus: int | None = None, timeout_s: float = DEPLOY_TIMEOUT_S,
             ingress: str = DEFAULT_INGRESS) -> Iterator[OursServer]:
    """Start the ``llm`` app (see the module docstring), fronted by ``ingress`` as `blatam up --ingress` does;
    yields where it answers."""
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions

    port = free_loopback_port()
    config = llm_only(load_config(config_path, host="127.0.0.1", port=port), model_path, dtype)
    front = fit_ingress(config, ingress)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        fit_replica_cpus(config, ray.cluster_resources().get("CPU", 0.0))
        front = "; ".join([front, *fit_llm_front(config)])
        client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
            controller_options=config.controller_options,
        )
        client.deploy_apps(config, _blocking=False)
        app = config.applications[0]
        wait_until_running([app.name], timeout_s=timeout_s, stop=threading.Event())
        stats = serve.get_deployment_handle("LLMServer", app_name=app.name).get_stats.remote().result(timeout_s=60)
        replica = {key: stats.get(key) for key in ("torch_threads", "num_cpus", "dtype", "shard")}
        yield OursServer(f"http://127.0.0.1:{port}{app.route_prefix}", replica, front)
    finally:
        try:
            stop_serve()  # not serve.shutdown(): see scripts.serve_stop
        finally:
            ray.shutdown()
