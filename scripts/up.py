"""`blatam up`: run every Blatam service locally on Ray Serve, until Ctrl-C.

Starts a private local Ray cluster (``ray.init(address="local")``: the GCS
gets a free port, never Redis's 6379; the dashboard listens on
``--dashboard-port``), starts Serve's HTTP proxy on ``--host:--port`` and
deploys every application of ``serve_config.yaml`` exactly as ``serve
deploy`` would (same controller call, so ``deployments:`` overrides apply).
Embedded defaults need no server: without DATABASE_URL the services share the
SQLite file ``<data dir>/blatam.db``; without REDIS_URL rate limits are per
process. Both are said in the output. The llm app serves SmolLM2 (pulled into
``<data dir>/models`` on first start) unless ``--model`` says otherwise
(`scripts.up_model`). The LLM's model replicas reserve the CPUs the file gives
them (2), which are their torch threads; on a cluster with fewer CPUs the
reservations are scaled down to fit, and the notes say what each got
(`scripts.up_cpus`). HAProxy answers HTTP in front of the gateway's
replicas (``--ingress proxy``: Serve's Python proxy; `scripts.up_ingress`).

Ray 2.60 turns token authentication on for clusters started by ``ray.init``
(token in ``~/.ray/auth_token``). This command talks to its cluster in
process, so it needs nothing; the ``serve``/``ray`` CLIs and the dashboard
need the address and the token, so it prints an ``export RAY_ADDRESS=...
RAY_AUTH_MODE=token`` line to paste (see `scripts.ray_access`). Set
``RAY_AUTH_MODE=disabled`` before ``blatam up`` to turn it off.

Ctrl-C stops Serve first and waits (up to ``SERVE_STOP_TIMEOUT_S``) until its
controller has exited, then stops Ray (see `scripts.serve_stop` for why it
does not call ``serve.shutdown()``). Slow steps (importing Ray, starting it,
deploying) show a spinner on a terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from scripts.ray_access import cli_env, export_line, token_auth_enabled, token_location
from scripts.serve_stop import SERVE_STOP_TIMEOUT_S, stop_serve
from scripts.up_cpus import ReplicaCpus, fit_replica_cpus
from scripts.up_detach import DETACHED_ENV, DetachError, start_detached, stop_detached
from scripts.up_ingress import DEFAULT_INGRESS, fit_ingress, fit_llm_front, ingress_error
from scripts.up_model import ModelChoiceError, apply_model, choose_model, configured_model, has_llm_app

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "serve_config.yaml"
DEPLOY_TIMEOUT_S = 600.0
STATUS_POLL_S = 0.5
MONITOR_EVERY_S = 10.0

logger = logging.getLogger("blatam.up")


class UpError(Exception):
    """Why `blatam up` cannot go on (printed, exit code 1 or 2)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def load_config(path: Path, *, host: str, port: int) -> Any:
    """serve_config.yaml as a validated `ServeDeploySchema`, with the proxy on host:port."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UpError(f"Cannot read {path}: {exc}", 2) from exc
    if not isinstance(raw, dict):
        raise UpError(f"{path} is not a Serve deploy file (a mapping with `applications`)", 2)
    raw.setdefault("http_options", {}).update({"host": host, "port": port})
    try:
        config = ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        raise UpError(f"{path} is not a valid Serve deploy file:\n{exc}", 2) from exc
    if not config.applications:
        raise UpError(f"{path} lists no applications", 2)
    return config


def prepare_environment(data_dir: Path | None) -> list[str]:
    """Set the variables replicas inherit (before Ray starts); return what to tell the user.

    Raises:
        UpError: the settings are invalid (e.g. the default SECRET_KEY outside development).
    """
    from business_modules.settings import load_settings

    notes: list[str] = []
    # One machine, for trying it: development unless told otherwise (the settings' default is production).
    os.environ.setdefault("BLATAM_ENV", "development")
    os.environ["BLATAM_DATA_DIR"] = str(resolve_data_dir(data_dir))
    # Workers import `deployments`, `business_modules` ... from the project, wherever `blatam` was started.
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        settings = load_settings()
    except ValueError as exc:
        raise UpError(f"Invalid settings: {exc}", 2) from exc
    if settings.database_url:
        notes.append(f"Database: {_redact(settings.database_url)}")
    else:
        notes.append(f"Database: embedded SQLite {settings.blatam_data_dir / 'blatam.db'} (DATABASE_URL not set)")
    if settings.redis_url:
        notes.append(f"Redis: {_redact(settings.redis_url)}")
    else:
        notes.append("Redis: none (REDIS_URL not set): rate limits are counted per process")
    notes.append(f"Environment: {settings.blatam_env}"
                 + (" (default SECRET_KEY: development only)" if settings.blatam_env == "development" else ""))
    return notes


def _redact(url: str) -> str:
    import re

    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1:***@", url)


def app_states() -> dict[str, tuple[str, str]]:
    """Serve's status of every application: name -> (status, message)."""
    from ray import serve

    return {name: (str(getattr(app.status, "value", app.status)), app.message or "")
            for name, app in serve.status().applications.items()}


def wait_until_running(names: list[str], *, timeout_s: float, stop: threading.Event,
                       on_states: Callable[[dict[str, str]], None] | None = None) -> None:
    """Block until every application in `names` is RUNNING; `on_states` sees each poll's statuses.

    Raises:
        UpError: an application failed to deploy, or `timeout_s` passed.
    """
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        states = app_states()
        failed = {n: states[n] for n in names if n in states and states[n][0] in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            details = "\n".join(f"  {name}: {status}\n{message}" for name, (status, message) in failed.items())
            raise UpError(f"Application(s) failed to deploy:\n{details}")
        if on_states is not None:
            on_states({n: states.get(n, ("NOT_STARTED",))[0] for n in names})
        if all(states.get(n, ("",))[0] == "RUNNING" for n in names):
            return
        if time.monotonic() > deadline:
            pending = {n: states.get(n, ("NOT_STARTED",))[0] for n in names}
            raise UpError(f"Applications not RUNNING after {timeout_s:g} s: {pending}")
        stop.wait(STATUS_POLL_S)


def local_base(host: str, port: int) -> str:
    """The HTTP address to give a user on this machine for a server bound to ``host``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def print_ready(config: Any, *, host: str, port: int, dashboard_url: str | None, gcs_address: str,
                notes: list[str]) -> None:
    """Where everything is: the services' URLs, the dashboard, and the line that lets Ray's CLI in."""
    base = local_base(host, port)
    lines = [
        "",
        "Blatam is up.",
        f"  Gateway:         {base}/",
        f"  API docs:        {base}/docs",
        f"  Health:          {base}/health",
    ]
    for app in config.applications:
        where = f"{base}{app.route_prefix}" if app.route_prefix else "by handle (no HTTP route of its own)"
        lines.append(f"  app {app.name:<12} {where}")
    if any(app.name == "llm" and app.route_prefix is None for app in config.applications):
        lines.append(f"  OpenAI API:      {base}/v1  (through the gateway: an API key as the bearer credential)")
    token = f"token auth: token in {token_location()}" if token_auth_enabled() else "no token auth"
    if dashboard_url:
        lines.append(f"  Ray dashboard:   {dashboard_url}  ({token})")
    lines += [
        f"  Ray address:     {gcs_address}  ({token})",
        "  Ray CLI:         paste this line in another shell, then `ray status`, `ray list actors`, `serve status`:",
        f"    {export_line(cli_env(gcs_address, dashboard_url))}",
    ]
    lines += [f"  {note}" for note in notes]
    lines += [
        "  Create a user:   blatam users create alice --scopes '*'   (then POST /api/v1/auth/login)",
        "  An API key:      blatam keys create --user alice --name dev   (printed once; OpenAI clients' api_key)",
        "Stop with: blatam down" if os.environ.get(DETACHED_ENV) else "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def select_model(config: Any, model: str | None, console: Console) -> str | None:
    """Choose (and on first start pull) the llm app's model; the line to tell the user, None without an llm app."""
    from cache_actors.engine.model_store import models_root

    if not has_llm_app(config):
        return None
    configured = configured_model(config) or os.environ.get("LLM_MODEL_PATH") or os.environ.get("MODEL_PATH")
    try:
        choice = choose_model(model, configured, root=models_root(), console=console)
    except ModelChoiceError as exc:
        raise UpError(f"--model {model}: {exc}", 2) from exc
    apply_model(config, choice)
    return choice.describe()


def cpu_notes(reservations: list[ReplicaCpus]) -> list[str]:
    """What each CPU-reserving deployment got; for the LLM's replicas, the torch threads that makes."""
    from deployments.llm.threads import choose_threads

    return [r.describe() + (f" = torch threads {choose_threads(None, r.given).threads} of each model replica"
                            if r.deployment == "LLMServer" else "") + r.scaling_note() for r in reservations]


def run_up(*, config_path: Path, host: str, port: int, num_cpus: int | None, dashboard: bool,
           dashboard_port: int, data_dir: Path | None, deploy_timeout_s: float, model: str | None = None,
           ingress: str = DEFAULT_INGRESS) -> int:
    """Start, deploy, block until a signal, shut down; return the exit code (1 when Serve did not stop in time)."""
    config = load_config(config_path, host=host, port=port)
    notes = prepare_environment(data_dir)
    console = Console(stderr=True)  # spinners and progress bars only; on a pipe they print nothing
    model_note = select_model(config, model, console)
    if model_note:
        notes.append(model_note)
    notes.append(fit_ingress(config, ingress))
    for note in notes:
        logger.info("%s", note)

    with console.status("Importing Ray ..."):
        import ray
        from ray.serve._private import api as serve_api
        from ray.serve.config import gRPCOptions

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            return
        print(f"\nReceived {signal.Signals(signum).name}: shutting down Serve, then Ray ...", flush=True)
        stop.set()

    with console.status("Starting a local Ray cluster ..."):
        context = ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            namespace="blatam",
        )
    for line in [*cpu_notes(fit_replica_cpus(config, ray.cluster_resources().get("CPU", 0.0))),
                 *fit_llm_front(config)]:
        logger.info("%s", line)
        notes.append(line)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    serve_stopped: bool | None = None  # None: not shut down yet
    try:
        names = [app.name for app in config.applications]
        with console.status("Starting Serve and its HTTP door ...") as status:
            client = serve_api.serve_start(
                http_options=config.http_options.model_dump(),
                proxy_location=config.proxy_location,
                grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
                controller_options=config.controller_options,  # e.g. the proxies' request-id middleware
            )
            client.deploy_apps(config, _blocking=False)
            print(f"Deploying {', '.join(names)} from {config_path} ...", flush=True)
            status.update("Deploying ...")
            wait_until_running(names, timeout_s=deploy_timeout_s, stop=stop, on_states=lambda states: status.update(
                "Deploying: " + ", ".join(f"{name} {state}" for name, state in states.items())))
        if not stop.is_set() and any(app.route_prefix == "/" for app in config.applications):
            from scripts.up_health import wait_healthy  # here: `blatam --help` does not import httpx

            with console.status("Waiting for the gateway's /health (its first calls to each service) ..."):
                health = wait_healthy(local_base(host, port), stop=stop)
            if (health_note := health.note()) is not None:
                logger.warning("%s", health_note)
                notes.append(health_note)
        if not stop.is_set():
            dashboard_url = f"http://{context.dashboard_url}" if getattr(context, "dashboard_url", None) else None
            print_ready(config, host=host, port=port, dashboard_url=dashboard_url,
                        gcs_address=context.address_info["gcs_address"], notes=notes)
            monitor(names, stop)
        serve_stopped = shutdown(console)
        return 0 if serve_stopped else 1
    finally:
        if serve_stopped is None:  # an error above: still stop what was started
            shutdown(console)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def monitor(names: list[str], stop: threading.Event) -> None:
    """Block until `stop`; print any change in the applications' status."""
    last = {name: "RUNNING" for name in names}
    while not stop.wait(MONITOR_EVERY_S):
        try:
            states = app_states()
        except Exception as exc:  # noqa: BLE001 - keep serving; say what went wrong
            print(f"Could not read Serve status: {exc}", flush=True)
            continue
        for name in names:
            status = states.get(name, ("MISSING", ""))[0]
            if status != last.get(name):
                print(f"Application {name}: {last.get(name)} -> {status}", flush=True)
                last[name] = status


def shutdown(console: Console | None = None) -> bool:
    """Serve first (replicas close their pools, the proxy frees its port), then Ray; True when Serve stopped in time."""
    import ray

    console = console or Console(stderr=True)
    serve_stopped = True
    if ray.is_initialized():
        try:
            with console.status("Stopping Serve (deleting the apps) ..."):
                serve_stopped = stop_serve()
            if not serve_stopped:
                print(f"Serve did not stop within {SERVE_STOP_TIMEOUT_S:g} s; stopping Ray anyway.", flush=True)
        finally:
            with console.status("Stopping Ray ..."):
                ray.shutdown()
    print("Stopped." if serve_stopped else "Stopped (Serve was cut short).", flush=True)
    return serve_stopped


def up(
    config: Annotated[Path, typer.Option("--config", "-c", help="Serve deploy file.")] = DEFAULT_CONFIG,
    port: Annotated[int, typer.Option(help="HTTP port (of Serve's proxy, or HAProxy: --ingress).", min=1,
                                      max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Address HTTP listens on.")] = "127.0.0.1",
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for Ray (default: all).", min=1)] = None,
    dashboard: Annotated[bool, typer.Option(help="Start the Ray dashboard.")] = True,
    dashboard_port: Annotated[int, typer.Option(help="Ray dashboard port.", min=1, max=65535)] = 8265,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded data (default: $BLATAM_DATA_DIR or ./data).")] = None,
    deploy_timeout: Annotated[float, typer.Option(help="Seconds to wait for every app to run.")] = DEPLOY_TIMEOUT_S,
    model: Annotated[str | None, typer.Option(
        "--model", help="demo, smollm2 or a local Hugging Face folder (default: the deploy file's model_path, else "
                        "smollm2, pulled on first start; the demo model if that pull is impossible).")] = None,
    ingress: Annotated[str, typer.Option(
        "--ingress",
        help="What answers HTTP: HAProxy in front of the gateway's replicas (~10 ms less a request than Serve's "
             "proxy; Serve's proxy where no HAProxy binary is), or proxy: Serve's Python proxy (scripts/up_ingress.py)."
    )] = DEFAULT_INGRESS,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Run in the background (log in <data dir>/blatam-up.log); `blatam down` stops it.")] = False,
) -> None:
    """Start a local Ray cluster and every service in serve_config.yaml; Ctrl-C (or, detached, `blatam down`) stops it."""
    if (error := ingress_error(ingress)) is not None:
        print(f"blatam up: {error}", file=sys.stderr, flush=True)
        raise typer.Exit(2)
    if detach:
        args = ["--config", str(config.resolve()), "--port", str(port), "--host", host, "--dashboard-port",
                str(dashboard_port), "--deploy-timeout", str(deploy_timeout), "--dashboard" if dashboard else "--no-dashboard"]
        args += ["--num-cpus", str(num_cpus)] if num_cpus else []
        args += ["--model", model] if model else []
        args += ["--ingress", ingress]
        resolved = resolve_data_dir(data_dir)
        args += ["--data-dir", str(resolved)]
        try:
            started = start_detached(args, resolved, timeout_s=deploy_timeout + 120)
        except DetachError as exc:
            print(f"blatam up --detach: {exc}", file=sys.stderr, flush=True)
            raise typer.Exit(1) from None
        print(started.ready_text)
        print(f"Running in the background as pid {started.pid}; log: {started.log}", flush=True)
        raise typer.Exit(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = run_up(config_path=config, host=host, port=port, num_cpus=num_cpus, dashboard=dashboard,
                      dashboard_port=dashboard_port, data_dir=data_dir, deploy_timeout_s=deploy_timeout,
                      model=model, ingress=ingress)
    except UpError as exc:
        print(f"blatam up: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(exc.exit_code) from exc
    raise typer.Exit(code)


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The data folder `blatam up` uses: --data-dir, else $BLATAM_DATA_DIR, else ./data (absolute)."""
    return Path(data_dir or os.environ.get("BLATAM_DATA_DIR", "data")).expanduser().resolve()


def down(
    data_dir: Annotated[Path | None, typer.Option(help="The data folder `blatam up --detach` used (default: "
                                                       "$BLATAM_DATA_DIR or ./data).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing it.", min=1)] = 120.0,
) -> None:
    """Stop what `blatam up --detach` started: Serve, then its Ray cluster (KV shards and coordinator included)."""
    print(stop_detached(resolve_data_dir(data_dir), timeout_s=timeout), flush=True)


if __name__ == "__main__":  # `python -m scripts.up` = `blatam up`
    typer.run(up)
