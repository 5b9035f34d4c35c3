"""One local Ray + Serve instance for every deployment test (session scope).

Usage in a service test::

    from tests.deployments.conftest import run_app

    @pytest.fixture(scope="module")
    def redundancy_url(serve_instance):
        run_app(build_redundancy({}), name="redundancy", route_prefix="/redundancy")
        yield f"{serve_instance.base_url}/redundancy"
        serve.delete("redundancy")

Keep replicas at ``num_cpus=0`` (``.options(ray_actor_options={"num_cpus": 0})``
or in the builder): the cluster has 2 CPUs for everything. Replicas inherit
this process's environment from the moment Ray starts; pass per-test settings
through application args, not ``os.environ``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVE_NUM_CPUS = 2
TEST_PROXY_HEAD_TIMEOUT_S = 75
"""The test proxies' bound on a response's head (`deployments.common.proxy_failures`): above the test gateways'
``gateway_request_timeout_s`` (60) and every answer a test waits for, below the fault drill's client timeout (90),
so a request Serve's router loses there is answered 503 instead of read as a timeout."""
APP_START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServeInstance:
    """Where the test Serve proxy listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def run_app(app, *, name: str, route_prefix: str, timeout_s: float = APP_START_TIMEOUT_S) -> None:
    """Deploy `app` (a bound Application) and wait until it is RUNNING."""
    from ray import serve

    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    wait_app_running(name, timeout_s=timeout_s)


def wait_app_running(name: str, *, timeout_s: float = APP_START_TIMEOUT_S) -> None:
    """Block until Serve reports application `name` RUNNING; fail on DEPLOY_FAILED."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return
        if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"Serve application {name!r} failed to deploy: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve application {name!r} not RUNNING after {timeout_s:g} s: {app}")
        time.sleep(0.2)


def ray_logs_dir() -> Path:
    """This Ray session's log folder (Serve's files are under ``serve/``); a private Ray name, stable in 2.60."""
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path())


def wait_http(url: str, *, timeout_s: float = 60.0, ok=lambda r: r.status_code < 500) -> httpx.Response:
    """Poll `url` until it answers in a way `ok` accepts."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5.0)
            if ok(response):
                return response
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer in {timeout_s:g} s (last: {last!r})")


def serve_instance_session() -> Iterator[ServeInstance]:
    """The body of the session fixture `serve_instance` (registered in tests/conftest.py, so that every test
    folder, tests/deployments and tests/fuzz alike, shares ONE Ray cluster: a process can init Ray once).

    A local Ray cluster (2 CPUs, no dashboard) with Serve's proxy on a free port.

    The controller gets serve_config.yaml's ``controller_options`` (its proxies
    install `deployments.common.request_id.proxy_middlewares`), as in production,
    with the head deadline at `TEST_PROXY_HEAD_TIMEOUT_S`.
    """
    import ray
    from ray import serve

    from deployments.common.proxy_failures import HEAD_TIMEOUT_ENV
    from deployments.common.request_id import PROXY_ENV

    # address="local": always a private cluster, never one a `ray start` left on this host.
    ray.init(address="local", num_cpus=SERVE_NUM_CPUS, include_dashboard=False, log_to_driver=False)
    instance = ServeInstance(host="127.0.0.1", port=free_port())
    serve.start(http_options={"host": instance.host, "port": instance.port},
                controller_options={"runtime_env": {"env_vars": {**PROXY_ENV,
                                                                 HEAD_TIMEOUT_ENV: str(TEST_PROXY_HEAD_TIMEOUT_S)}}})
    try:
        yield instance
    finally:
        serve.shutdown()
        ray.shutdown()
