"""Throw-away PostgreSQL and Redis servers that a fault test may stop and start.

The machine's own servers (5432, 6379) are shared by every test and by CI:
a test that stops its database must own it. `ThrowawayPostgres` runs
``initdb`` and ``pg_ctl`` from the installed PostgreSQL as the ``postgres``
user (the server refuses to run as root) in a temporary folder on a free
port, trust auth on 127.0.0.1; `ThrowawayRedis` runs ``redis-server`` with
no persistence. Both stop and start in place (same port, same data), which
is what a restart or an outage looks like to the services.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.deployments.conftest import free_port

START_TIMEOUT_S = 30.0


def _wait_port(port: int, *, up: bool, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until 127.0.0.1:`port` accepts (``up``) or refuses connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                accepting = True
        except OSError:
            accepting = False
        if accepting == up:
            return
        time.sleep(0.1)
    raise TimeoutError(f"127.0.0.1:{port} still {'refusing' if up else 'accepting'} after {timeout_s:g} s")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), None when there is none."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def missing_servers() -> str | None:
    """Why the throw-away servers cannot run here (a skip reason), or None."""
    if postgres_bin() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql (Debian package postgresql)"
    if shutil.which("redis-server") is None:
        return "no redis-server (Debian package redis-server)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
    return None


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of its own, database ``test``, trust auth on 127.0.0.1:`port`.

    Its folder is made directly under the system's temporary folder: the
    server's user must be able to reach it, and pytest's ``tmp_path`` is
    private to root.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="blatam-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def _run(self, *args: str) -> None:
        command = [str(postgres_bin() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr[-2000:]}")

    def create(self) -> ThrowawayPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "test")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", options, "-w",
                  "-t", str(int(START_TIMEOUT_S)), "start")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in an outage or a restart."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        _wait_port(self.port, up=False)

    def destroy(self) -> None:
        try:
            self.stop()
        except (RuntimeError, TimeoutError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class ThrowawayRedis:
    """A ``redis-server`` of its own on 127.0.0.1:`port`, keeping nothing on disk."""

    root: Path
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
        self._proc = None
        _wait_port(self.port, up=False)
