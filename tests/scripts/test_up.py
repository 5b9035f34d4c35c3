"""`blatam up` as a user runs it: a subprocess, real HTTP, Ctrl-C.

Runs ``python -m scripts.up`` (the function registered as ``blatam up``) on
free ports with the embedded defaults (SQLite in tmp_path, no Redis), waits
until it says it is up, checks /health, creates a user with the admin CLI
while it serves, logs in through the gateway, pastes the printed ``export
RAY_ADDRESS=... RAY_AUTH_MODE=token`` line into a clean environment and runs
Ray's own CLI with it, then sends SIGINT to the process group (what Ctrl-C
in a terminal does) and expects a clean exit, without Ray's
"graceful_shutdown failed" retry message.

One `blatam up` (about two minutes on 2 cores): the one with no package index,
so the demo model serves and says why. Which model is chosen when one is
installed is `tests/scripts/test_up_model.py`; the real model served through
the gateway is `tests/deployments/test_llm_real_model.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.deployments.conftest import free_port
from tests.scripts.ray_head import cluster_niceness

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300.0  # the llm app loads its model; a loaded 2-core machine took 180 s
STOP_TIMEOUT_S = 60.0
"""Serve's controller gets 30 s to delete the apps (`SERVE_STOP_TIMEOUT_S`), Ray a few more to stop."""
RAY_CLI = Path(sys.executable).with_name("ray")


class Output:
    """Collects a subprocess's merged output in a thread, so the pipe never fills."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, proc: subprocess.Popen[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            if proc.poll() is not None:
                raise AssertionError(f"blatam up exited with {proc.returncode} before {needle!r}:\n{self.text[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not printed within {timeout_s:g} s:\n{self.text[-4000:]}")
            time.sleep(0.2)


def pasted_env(output: str) -> dict[str, str]:
    """The variables of the ``export ...`` line `blatam up` printed, as a shell would read them."""
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("export RAY_ADDRESS=")]
    assert len(lines) == 1, output[-4000:]
    words = shlex.split(lines[0])
    assert words[0] == "export"
    return dict(word.split("=", 1) for word in words[1:])


RAY_VARS = ("RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def unreachable_index_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with pip pointed at a closed port and no config file or local wheels: every pull fails fast."""
    clean = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    return {**clean, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}


def start_up(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Output, int, int]:
    port, dashboard_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.up", "--port", str(port), "--dashboard-port", str(dashboard_port),
         "--num-cpus", "2", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    return proc, Output(proc), port, dashboard_port


def admin_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """`blatam users ...` / `blatam keys ...` run while `blatam up` serves (they write the same SQLite file)."""
    app = "users_app" if args[0] == "users" else "keys_app"
    done = subprocess.run([sys.executable, "-c", f"from scripts.admin import {app}; {app}()", *args[1:]],
                          cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def api_key(env: dict[str, str], user: str, scopes: str) -> dict[str, str]:
    """A new user with a key of `scopes`; the header an OpenAI client sends with it."""
    admin_cli(env, "users", "create", user, "--scopes", scopes, "--password-stdin", stdin="a long enough password\n")
    key = json.loads(admin_cli(env, "keys", "create", "--user", user, "--name", "test", "--json"))["api_key"]
    return {"Authorization": f"Bearer {key}"}


def base_env(tmp_path: Path) -> dict[str, str]:
    # No BLATAM_ENV, no SECRET_KEY: as on a fresh machine (`blatam up` and the admin commands choose development).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MODEL_PATH",
                                                               "LLM_MODEL_PATH", "BLATAM_ENV", "SECRET_KEY",
                                                               *RAY_VARS)}
    env.update(BLATAM_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    return env


def stop_up(proc: subprocess.Popen[str], output: Output) -> str:
    """Ctrl-C (SIGINT to the process group); the output printed after it, once the process exited 0."""
    signalled_at = len(output.text)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
    started = time.monotonic()
    assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, output.text[-4000:]
    print(f"blatam up stopped {time.monotonic() - started:.1f} s after SIGINT")
    time.sleep(0.5)  # let the reader thread drain the pipe
    return output.text[signalled_at:]


def test_blatam_up_serves_then_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    # No package index: the default model cannot be pulled, so the demo model serves, and says why.
    env = unreachable_index_env(base_env(tmp_path))
    proc, output, port, dashboard_port = start_up(tmp_path, env)
    base = f"http://127.0.0.1:{port}"
    try:
        output.wait_for("Press Ctrl-C to stop.", proc, START_TIMEOUT_S)
        assert f"{base}/docs" in output.text and "embedded SQLite" in output.text and "REDIS_URL not set" in output.text
        assert "Environment: development (default SECRET_KEY: development only)" in output.text
        assert "Could not pull smollm2" in output.text and "serving the built-in demo model instead" in output.text
        assert "Model: built-in demo model (smollm2 could not be pulled" in output.text
        # serve_config.yaml's LLMServer reserves both cores, its torch threads; everything else fits beside it.
        assert "CPUs: llm/LLMServer reserves 2 per replica = torch threads 2 of each model replica" in output.text
        output.wait_for("torch threads 2 (set from num_cpus, num_cpus 2)", proc, 30)  # the replica's own log line
        assert not list((tmp_path / "data" / "models").glob("*")), "a failed pull left files behind"
        # Secure by default: the OpenAI API is the gateway's /v1, behind a key; no service has a route of its own.
        assert f"OpenAI API:      {base}/v1" in output.text and f"app {'llm':<12} by handle" in output.text
        assert httpx.get(f"{base}/v1/models", timeout=30).status_code == 401
        card = httpx.get(f"{base}/v1/models", timeout=30, headers=api_key(env, "ops", "llm")).json()["data"][0]
        assert card["blatam"]["kind"] == "demo" and "could not be pulled" in card["blatam"]["note"], card
        direct = httpx.post(f"{base}/redundancy/analyze", timeout=30, json={"content": "x"})
        assert direct.status_code == 404 and direct.json()["error"]["code"] == "not_found", direct.text
        assert f"http://127.0.0.1:{dashboard_port}" in output.text

        # The printed line is all another shell needs for Ray's CLI (address + token auth).
        ray_env = pasted_env(output.text)
        assert ray_env["RAY_AUTH_MODE"] == "token" and f"Ray address:     {ray_env['RAY_ADDRESS']}" in output.text
        assert ray_env["RAY_DASHBOARD_ADDRESS"] == f"http://127.0.0.1:{dashboard_port}"
        actors = subprocess.run([str(RAY_CLI), "list", "actors", "--format", "json"], env={**env, **ray_env},
                                capture_output=True, text=True, timeout=120)
        assert actors.returncode == 0, actors.stderr[-3000:]
        assert "ServeController" in actors.stdout
        status = subprocess.run([str(RAY_CLI), "status"], env={**env, **ray_env}, capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr[-3000:]
        no_token = {k: v for k, v in ray_env.items() if k != "RAY_AUTH_MODE"}  # why the line says RAY_AUTH_MODE
        refused = subprocess.run([str(RAY_CLI), "list", "actors"], env={**env, **no_token}, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode != 0

        deadline = time.monotonic() + 30  # a controller busy right after start-up may leave services "unknown"
        while (report := httpx.get(f"{base}/health", timeout=30).json())["status"] != "healthy":
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        assert report["status"] == "healthy", report
        assert report["database"]["backend"] == "sqlite" and report["redis"]["status"] == "disabled"
        assert report["cache"]["model_kind"] == "demo" and "could not be pulled" in report["cache"]["model_note"]
        assert report["services"]["redundancy"]["status"] == "healthy"
        niceness = cluster_niceness(ray_env["RAY_ADDRESS"])  # Serve's proxy and the gateway: Ray's 15 starved them
        assert niceness.get("ray::ProxyActor") == niceness.get("ray::ServeReplica:gateway:Gateway") == {0}, niceness
        assert (tmp_path / "data" / "blatam.db").exists()

        admin_cli(env, "users", "create", "alice", "--scopes", "redundancy", "--password-stdin",
                  stdin="a long enough password\n")
        login = httpx.post(f"{base}/api/v1/auth/login", timeout=30,
                           json={"username": "alice", "password": "a long enough password"})
        assert login.status_code == 200, login.text
        me = httpx.get(f"{base}/api/v1/auth/me", timeout=30,
                       headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        assert me.json()["scopes"] == ["redundancy"]
        unsafe = httpx.get(f"{base}/no/such/route", timeout=30, headers={"X-Request-ID": "<script>" + "x" * 5000})
        assert unsafe.headers.get_list("x-request-id") == [unsafe.json()["error"]["request_id"]]  # one, fresh
        assert len(unsafe.headers["x-request-id"]) <= 128 and "<" not in unsafe.headers["x-request-id"]

        after = stop_up(proc, output)
        assert "Stopped." in after
        assert "graceful_shutdown failed" not in after and "Traceback" not in after, after[-4000:]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/health", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
