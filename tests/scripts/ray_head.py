"""A `ray start --head --block` cluster of a test's own, and running the CLI against it in another process.

The head runs in its own process group (only that group is stopped
afterwards, never the test session's Ray) with a short temp dir (Ray's
socket paths must stay short) and no RAY_* variables of the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tests.deployments.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY_CLI = Path(sys.executable).with_name("ray")


def ray_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "RAY_TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}


@contextlib.contextmanager
def ray_head(tag: str, *extra: str, num_cpus: int = 1,
             head_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """(GCS address, environment for processes that talk to it) of a fresh head; stopped on exit.

    `head_env` goes to the head's processes only (e.g. ``RAY_metrics_report_interval_ms``)."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"{tag}{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    port = free_port()
    env = ray_env(tmp)
    head = subprocess.Popen([str(RAY_CLI), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
                             "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats", *extra],
                            env={**env, **(head_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)  # a whole throw-away cluster: no need to wait for Ray's slow clean exit
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout_s``; waits for it either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def run_python(code: str, env: dict[str, str], timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def run_blatam(env: dict[str, str], *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it (no RAY_AUTH_MODE: it sends the host's token itself)."""
    return run_python(f"from scripts.cli import app; app({list(args)!r})", env, timeout_s)


def cluster_niceness(gcs_address: str) -> dict[str, set[int]]:
    """Process title -> the nice values of that cluster's processes (its raylet's descendants: workers,
    replicas, the proxy's HAProxy), so a test sees its own cluster's even beside another test's."""
    import psutil

    port = gcs_address.rsplit(":", 1)[-1]
    raylets = [p for p in psutil.process_iter(["cmdline"])
               if (cmdline := p.info["cmdline"] or []) and cmdline[0].endswith("raylet")
               and any(arg.startswith("--gcs-address=") and arg.endswith(f":{port}") for arg in cmdline)]
    found: dict[str, set[int]] = {}
    for raylet in raylets:
        for proc in raylet.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                found.setdefault(proc.name() if proc.name() == "haproxy" else " ".join(proc.cmdline()).strip(),
                                 set()).add(proc.nice())
    return found
