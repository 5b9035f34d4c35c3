"""`blatam up --detach` and `blatam down`: the whole local system in the background, and stopping it.

``--detach`` starts ``python -m scripts.up`` with the same options in a new
session (it survives the shell that started it), its output going to
``<data dir>/blatam-up.log``, and records its pid in
``<data dir>/blatam-up.json``. It returns once the child prints that Blatam
is up (printing the same block: URLs, Ray address), or fails with the log's
last lines when the child exits or does not get there in time.

`blatam down` sends that process SIGTERM: it stops Serve, then its Ray
cluster, and with the cluster go the KV shards and the coordinator, pools
included. After ``DOWN_TIMEOUT_S`` its whole process group is killed. A
recorded pid that is no longer a ``scripts.up`` process (exited, or reused by
the system) is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

STATE_FILE = "blatam-up.json"
LOG_FILE = "blatam-up.log"
READY_LINE = "Blatam is up."
END_OF_READY = "blatam down"  # the ready block's last line names how to stop (print_ready, detached)
DOWN_TIMEOUT_S = 120.0
DETACHED_ENV = "BLATAM_UP_DETACHED"


class DetachError(Exception):
    """A detached start or stop that did not happen; the message says why."""


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    log: Path
    ready_text: str


def _state(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _our_process(pid: int) -> psutil.Process | None:
    """The process `pid` if it is a `scripts.up` run (not a pid the system reused since)."""
    try:
        process = psutil.Process(pid)
        return process if "scripts.up" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE \
            else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def running_pid(data_dir: Path) -> int | None:
    state = _state(data_dir)
    return state["pid"] if state and _our_process(int(state.get("pid", 0))) else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start_detached(up_args: list[str], data_dir: Path, timeout_s: float) -> Started:
    """Start `blatam up` with `up_args` in the background; return once it is up (DetachError otherwise)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if (pid := running_pid(data_dir)) is not None:
        raise DetachError(f"already running (pid {pid}, state in {data_dir / STATE_FILE}); `blatam down` first")
    log_path = data_dir / LOG_FILE
    with log_path.open("wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "scripts.up", *up_args], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, DETACHED_ENV: "1", "PYTHONUNBUFFERED": "1"})
    (data_dir / STATE_FILE).write_text(json.dumps({"pid": child.pid, "log": str(log_path), "args": up_args,
                                                   "started": time.time()}), encoding="utf-8")
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if READY_LINE in text:
            block = text[text.index(READY_LINE):]
            if END_OF_READY in block:
                return Started(child.pid, log_path, block.strip())
        if child.poll() is not None:
            (data_dir / STATE_FILE).unlink(missing_ok=True)
            raise DetachError(f"`blatam up` exited with code {child.returncode} before it was up; the end of "
                              f"{log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            stop_detached(data_dir, timeout_s=30)
            raise DetachError(f"not up within {timeout_s:g} s (stopped again); the end of {log_path}:\n"
                              f"{_tail(log_path)}")
        time.sleep(0.5)


def stop_detached(data_dir: Path, timeout_s: float = DOWN_TIMEOUT_S) -> str:
    """Stop what `start_detached` started; a sentence saying what happened."""
    state = _state(data_dir)
    if state is None:
        return f"Nothing to stop: no {STATE_FILE} in {data_dir} (was it started with `blatam up --detach`?)."
    pid = int(state.get("pid", 0))
    process = _our_process(pid)
    if process is None:
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return f"Nothing to stop: pid {pid} is no longer running `blatam up`."
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
        how = "stopped Serve, then Ray (KV actors included)"
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
        process.wait(timeout=30)
        how = f"did not stop within {timeout_s:g} s: killed with its process group"
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return f"Stopped `blatam up` (pid {pid}): {how}. Its log: {state.get('log')}"
