"""The Grafana dashboards: their JSON, their queries on a real Prometheus, and the push command.

Queries: a real Prometheus (the Debian ``prometheus`` binary, started here on a free
port with its own storage) scrapes the metrics endpoint of a `ray start --head`
cluster of this module's own, through the config ``blatam dashboards
prometheus-config`` writes, while real traffic runs in it
(`tests/scripts/metrics_traffic.py`): the distributed KV cache engine on the tiny
demo model, and, through the very objects that define them in production, the
events that traffic does not cause, the LLM replica's metrics, the router's
counters and Serve's HTTP metrics, so a renamed metric breaks this test. Every
panel query must then be accepted by Prometheus, every metric it reads must be
among Prometheus's metric names, and it must return series.

Push: Grafana cannot be installed here, so a small HTTP server stands in for its API
and records the calls grafana-client makes.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import httpx
import pytest
from typer.testing import CliRunner

from scripts.cli import app
from scripts.observability.catalog import load_dashboards, metric_names, panel_queries, panels, prometheus_expr
from scripts.observability.prometheus_config import prometheus_config
from tests.scripts.ray_head import ray_head, run_python, stop_process

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
        time.sleep(interval_s)


# --- the dashboard models -------------------------------------------------------------------------


def test_dashboards_are_grafana_models_on_a_datasource_variable():
    dashboards = load_dashboards()
    assert [d["title"] for d in dashboards] == ["Blatam KV cache", "Blatam LLM", "Blatam services"]
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    for dashboard in dashboards:
        assert 36 <= dashboard["schemaVersion"] <= 41
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)) and ids
        for panel in panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert metric_names(target["expr"]), target["expr"]
                # nothing Grafana-only survives but the interval variables the catalog substitutes
                assert "$" not in prometheus_expr(target["expr"]), target["expr"]


def test_list_prints_every_dashboard_and_panel():
    result = runner.invoke(app, ["dashboards", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for query in panel_queries():
        assert query.dashboard in result.output and query.panel in result.output


def test_prometheus_config_reads_rays_service_discovery_file(tmp_path):
    out = tmp_path / "prom" / "prometheus.yml"
    result = runner.invoke(app, ["dashboards", "prometheus-config", "--out", str(out)])
    assert result.exit_code == 0, result.output
    import yaml

    config = yaml.safe_load(out.read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    bad = runner.invoke(app, ["dashboards", "prometheus-config", "--scrape-interval", "often"])
    assert bad.exit_code != 0 and "duration" in bad.output


# --- the queries on a real Prometheus -------------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus binary is missing (Debian package `prometheus`; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def ray_cluster(prometheus_bin) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(metrics port, address, environment) of a `ray start --head` cluster of this module's own.

    Its own, not the session's: a cluster that earlier tests used (and killed actors and
    workers of) exported these counters in one CI run and not in the next. Workers report
    every second here (10 s by default)."""
    pytest.importorskip("ray")
    port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # whether or not the host has one
    with ray_head("obs", f"--metrics-export-port={port}", num_cpus=2,
                  head_env={"RAY_metrics_report_interval_ms": "1000", **auth}) as (address, env):
        yield port, address, {**env, **auth}


@pytest.fixture(scope="module")
def ray_metrics_port(ray_cluster) -> int:
    return ray_cluster[0]


@pytest.fixture(scope="module")
def traffic(ray_cluster) -> None:
    """Real cache traffic, and what it does not cause recorded through the production metric objects
    (`tests/scripts/metrics_traffic.py`: detached actors that outlive their driver and the head stops)."""
    _, address, env = ray_cluster
    done = run_python(f"from tests.scripts.metrics_traffic import main; import json; print(json.dumps(main({address!r})))",
                      env, timeout_s=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cached_tokens"] > 0 and result["recorded"]  # the traffic hit the cache, so hit counters exist


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, ray_metrics_port, tmp_path_factory) -> Iterator[str]:
    """A private Prometheus scraping the Ray metrics endpoint every second; yields its base URL."""
    root = tmp_path_factory.mktemp("prometheus")
    discovery = root / "prom_metrics_service_discovery.json"  # the shape Ray's head writes
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{ray_metrics_port}"]}]))
    config = root / "prometheus.yml"
    result = runner.invoke(app, ["dashboards", "prometheus-config", "--out", str(config),
                                 "--service-discovery", str(discovery), "--scrape-interval", "1s"])
    assert result.exit_code == 0, result.output
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is None and httpx.get(f"{url}/-/ready", timeout=2).status_code == 200,
                 timeout_s=30, what="Prometheus ready")
        yield url
    finally:
        stop_process(process)
        log.close()


def _query(url: str, expr: str) -> dict[str, Any]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    return reply.json()


def _names(url: str) -> set[str]:
    reply = httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10).json()
    assert reply["status"] == "success", reply
    return set(reply["data"])


@pytest.mark.ray
def test_every_panel_query_runs_on_a_real_prometheus(prometheus, traffic):
    queries = panel_queries()
    needed = {name for query in queries for name in query.metric_names}
    # Ray exports on its report interval (1 s in this module's cluster);
    # a name still missing after that is reported below with the panel that reads it.
    try:
        wait_for(lambda: needed <= _names(prometheus), timeout_s=60, what="every metric scraped")
    except TimeoutError:
        pass
    names = _names(prometheus)
    for query in queries:
        where = f"{query.dashboard} / {query.panel} / {query.ref_id}"
        reply = _query(prometheus, prometheus_expr(query.expr))
        assert reply["status"] == "success", f"{where}: {reply.get('error')}"
        missing = [name for name in query.metric_names if name not in names]
        assert not missing, f"{where} reads metrics Prometheus never saw: {missing}"
        # rates need two samples in the window; the labels the query joins on must match
        wait_for(lambda: _query(prometheus, prometheus_expr(query.expr))["data"]["result"],
                 timeout_s=20, what=f"series for {where}")


@pytest.mark.ray
def test_a_broken_query_is_refused_by_the_same_check(prometheus):
    reply = _query(prometheus, "sum by (tier) (rate(ray_kv_cache_hit_tokens_total[1m])")
    assert reply["status"] == "error" and reply["errorType"] == "bad_data"


# --- push against a stand-in Grafana --------------------------------------------------------------


class FakeGrafana:
    """The part of Grafana's HTTP API the push uses; records every call."""

    def __init__(self, *, refuse_auth: bool = False) -> None:
        self.refuse_auth = refuse_auth
        self.calls: list[tuple[str, str, Any, str]] = []  # method, path, json body, Authorization
        self.folders: list[dict[str, Any]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.calls.append((self.command, self.path, body, self.headers.get("Authorization", "")))
                status, reply = fake.answer(self.command, self.path, body)
                self._reply(status, reply)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.refuse_auth:
            return 401, {"message": "invalid API key"}
        path = path.split("?")[0]
        if (method, path) == ("GET", "/api/folders"):
            return 200, self.folders
        if (method, path) == ("POST", "/api/folders"):
            folder = {"id": len(self.folders) + 1, "uid": f"folder-{len(self.folders) + 1}", "title": body["title"]}
            self.folders.append(folder)
            return 200, folder
        if (method, path) == ("POST", "/api/dashboards/db"):
            self.dashboards[body["dashboard"]["uid"]] = body
            return 200, {"status": "success", "uid": body["dashboard"]["uid"]}
        if method == "GET" and path.startswith("/api/datasources/name/"):
            found = self.datasources.get(path.rsplit("/", 1)[1])
            return (200, found) if found else (404, {"message": "Data source not found"})
        if (method, path) == ("POST", "/api/datasources"):
            created = {**body, "id": len(self.datasources) + 1, "uid": "prom-uid"}
            self.datasources[body["name"]] = created
            return 200, {"datasource": created, "id": created["id"], "message": "Datasource added"}
        if method == "PUT" and path.startswith("/api/datasources/"):
            self.datasources[body["name"]] = {**body, "id": int(path.rsplit("/", 1)[1])}
            return 200, {"message": "Datasource updated"}
        return 404, {"message": f"no route {method} {path}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    yield fake
    fake.close()


def test_push_creates_folder_datasource_and_every_dashboard_then_updates_them(grafana):
    args = ["dashboards", "push", "--grafana-url", grafana.url, "--token", "sa-token",
            "--prometheus-url", "http://prometheus:9090"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    uids = [d["uid"] for d in load_dashboards()]
    assert [(m, p) for m, p, _, _ in grafana.calls] == [
        ("GET", "/api/datasources/name/Prometheus"), ("POST", "/api/datasources"),
        ("GET", "/api/folders"), ("POST", "/api/folders"),
    ] + [("POST", "/api/dashboards/db")] * len(uids)
    assert all(auth == "Bearer sa-token" for *_, auth in grafana.calls)
    created = grafana.calls[1][2]
    assert created["type"] == "prometheus" and created["url"] == "http://prometheus:9090"
    assert grafana.calls[3][2] == {"title": "Blatam"}
    saved = [body for m, p, body, _ in grafana.calls if p == "/api/dashboards/db"]
    assert [body["dashboard"]["uid"] for body in saved] == uids
    assert all(body["overwrite"] is True and body["folderUid"] == "folder-1" for body in saved)
    assert all(body["dashboard"]["id"] is None for body in saved)
    assert saved[0]["dashboard"]["panels"] == load_dashboards()[0]["panels"]

    grafana.calls.clear()
    second = runner.invoke(app, args[:-1] + ["http://prometheus-2:9090"])
    assert second.exit_code == 0, second.output
    methods = [(m, p) for m, p, _, _ in grafana.calls]
    assert ("PUT", "/api/datasources/1") in methods and ("POST", "/api/folders") not in methods
    assert grafana.datasources["Prometheus"]["url"] == "http://prometheus-2:9090"
    assert len(grafana.folders) == 1 and sorted(grafana.dashboards) == sorted(uids)


def test_push_into_a_named_folder_without_datasource(grafana):
    result = runner.invoke(app, ["dashboards", "push", "--grafana-url", grafana.url, "--token", "t", "--folder", "Ops"])
    assert result.exit_code == 0, result.output
    assert not any("/api/datasources" in p for _, p, _, _ in grafana.calls)
    assert grafana.folders[0]["title"] == "Ops"


def _assert_one_line_error(result: Any, *fragments: str) -> None:
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_push_refused_token_is_a_one_line_error():
    fake = FakeGrafana(refuse_auth=True)
    try:
        result = runner.invoke(app, ["dashboards", "push", "--grafana-url", fake.url, "--token", "wrong"])
    finally:
        fake.close()
    _assert_one_line_error(result, "401", "--token")


def test_push_to_unreachable_grafana_is_a_one_line_error():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = runner.invoke(app, ["dashboards", "push", "--grafana-url", url, "--token", "t", "--timeout", "3"])
    _assert_one_line_error(result, "cannot reach Grafana", url)


def test_push_rejects_a_url_without_scheme():
    result = runner.invoke(app, ["dashboards", "push", "--grafana-url", "grafana:3000", "--token", "t"])
    _assert_one_line_error(result, "http://")


def test_generated_config_is_valid_for_prometheus(tmp_path, prometheus_bin):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package `prometheus`) is missing")
    sd = tmp_path / "sd.json"
    sd.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(sd, "1s"))
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
