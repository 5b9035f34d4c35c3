"""The Grafana dashboards: their JSON, their queries on a real Prometheus, and the push command.

Queries: a real Prometheus (the Debian ``prometheus`` binary, started here on a free
port with its own storage) scrapes a local Ray cluster's metrics endpoint through
the config ``blatam dashboards prometheus-config`` writes, while real traffic runs:
the distributed KV cache engine on the tiny demo model. Events that traffic does not
cause (fallbacks, checksum mismatches, tier errors, demotions, prefetches), the LLM
replica's metrics, the router's counters and Serve's HTTP metrics are recorded from a
Ray actor through the very objects that define them in production (`CacheMetrics`,
`LLMMetrics`, `CacheAwareRouter`, Serve's `RequestIngressMetrics`), so a renamed
metric breaks this test. Every panel query must then be accepted by Prometheus,
every metric it reads must be among Prometheus's metric names, and it must return
series.

Push: Grafana cannot be installed here, so a small HTTP server stands in for its API
and records the calls grafana-client makes.
"""

from __future__ import annotations

import json
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

SYSTEM = "You are a careful assistant. Answer briefly and cite the policy section. " * 3


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus binary is missing (Debian package `prometheus`; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def ray_metrics_port(prometheus_bin) -> Iterator[int]:
    """The metrics port of a local Ray cluster: this process's if one runs, else a new one."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _metrics_export_port=free_port(), _system_config={"metrics_report_interval_ms": 1000})
    try:
        node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        yield int(node["MetricsExportPort"])
    finally:
        if started:
            ray.shutdown()


def _record_the_rest() -> Any:
    """An actor recording, through the production metric objects, what the traffic does not cause."""
    import ray

    @ray.remote(num_cpus=0)
    class Recorder:
        def record(self) -> bool:
            from ray.serve._private.common import DeploymentID, RequestProtocol
            from ray.serve._private.request_ingress_metrics import RequestIngressMetrics

            from cache_actors.actors.metrics import metrics
            from deployments.llm.metrics import LLMMetrics
            from deployments.llm.router import CacheAwareRouter

            cache = metrics()
            cache.add(cache.demoted_blocks, 2, shard="test-shard", tier="disk")
            cache.add(cache.prefetched_blocks, 3, shard="test-shard")
            cache.add(cache.fallbacks, 1, reason="coordinator_timeout")
            cache.add(cache.checksum_mismatches, 1, tier="device")
            cache.add(cache.tier_errors, 1, tier="redis", kind="TimeoutError")

            llm = LLMMetrics("tiny")
            for finish_reason in ("length", "stop"):
                llm.finished({"finish_reason": finish_reason, "prompt_tokens": 64, "cached_tokens": 48,
                              "completion_tokens": 6, "ttft_ms": 40.0})
            llm.failed()
            # Ray drops a gauge not set again within ~2 export intervals; the replica sets its
            # load on every routing-stats poll, this thread does the same every second.
            threading.Thread(target=self._keep_load, args=(llm,), daemon=True).start()

            router = CacheAwareRouter.__new__(CacheAwareRouter)  # Serve builds it; only its counters are used
            router._deployment_id = DeploymentID(name="LLMServer", app_name="llm")
            router.initialize_state(use_coordinator=False)
            router._note_decision("affinity")
            router._note_coordinator("ok")

            http = RequestIngressMetrics(RequestProtocol.HTTP, source="proxy", node_id="test", node_ip_address="127.0.0.1")
            for status, latency_ms in (("200", 12.0), ("200", 30.0), ("500", 5.0)):
                http.record_request(route="/api/v1/llm", method="POST", application="gateway", status_code=status,
                                    latency_ms=latency_ms, is_error=status == "500", deployment_name="Gateway")
            return True

        def _keep_load(self, llm: Any) -> None:
            while True:
                llm.load({"running": 2, "waiting": 1})
                time.sleep(1.0)

    recorder = Recorder.remote()
    assert ray.get(recorder.record.remote(), timeout=120)
    return recorder  # kept alive so its process keeps exporting


def _run_traffic() -> Any:
    """An actor sending requests through the distributed KV cache (a small cache, so blocks are also evicted).

    In an actor, as in production (the engine runs in LLM replicas), so the counters it records are exported by
    a fresh worker: in a long pytest session the driver may share a cluster other tests used and killed actors of.
    The actor is kept alive while Prometheus scrapes, since a dead worker's counters are no longer exported."""
    import ray

    @ray.remote(num_cpus=0)
    class Traffic:
        def run(self) -> int:
            from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
            from cache_actors.engine.demo_model import TINY_SPEC
            from cache_actors.engine.model_runner import ModelRunner
            from cache_actors.engine.requests import parse_request

            engine = UltraAdaptiveKVCacheEngine(
                KVCacheConfig(block_size=16, max_tokens=256, cache_strategy="lru", max_new_tokens=4,
                              enable_distributed=True, redis_url=None),
                runner=ModelRunner.load(None, demo_spec=TINY_SPEC),
            )
            cached = 0
            for i in range(6):
                text = SYSTEM + f"Question {i}: what is covered?"
                parsed = parse_request({"text": text}, default_max_new_tokens=4)
                cached += engine.generate_ids(parsed, engine.runner.encode(text))["cached_tokens"]
            self.engine = engine  # its client and shard stay up while the test runs
            return cached

    traffic = Traffic.remote()
    assert ray.get(traffic.run.remote(), timeout=300) > 0  # the traffic hit the cache, so hit counters exist
    return traffic


@pytest.fixture(scope="module")
def traffic(ray_metrics_port) -> Iterator[None]:
    """Real cache traffic, and what it does not cause recorded through the production metric objects."""
    import ray

    actors = [_run_traffic(), _record_the_rest()]
    yield
    for actor in actors:
        ray.kill(actor)


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
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
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
    # Ray exports on its report interval (1 s here, 10 s in a cluster this test did not start);
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
