"""The operator's verbs on the system `blatam up --detach` runs, as an operator runs them.

`blatam up --detach` (demo model, embedded defaults, free ports; HAProxy
answers HTTP, the default: `scripts.up_ingress`) starts the whole system
in the background; a user and an API key are made with the
admin CLI; real completions go through the gateway's `/v1` with that key;
then `blatam status`, `stats`, `monitor`, `cache persist|clear|load` run in
other processes with the Ray address `up` printed; last, `blatam down`
stops it all (and its Ray cluster with it). Just before that, the gateway's
replica is killed with a request in flight: HAProxy answers it our 503, or
closes the connection without a response (never its plain 500).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psutil
import pytest

from cache_actors.actors.cluster_view import CacheView, CoordinatorView, ShardView
from scripts.haproxy_error_page import RAY_PAGE_NAME, error_page
from scripts.ops.serve_view import AppView
from scripts.ops.status_cli import _problems
from tests.deployments.conftest import free_port
from tests.scripts.ray_head import cluster_niceness, ray_env, run_blatam
from tests.scripts.test_up import (START_TIMEOUT_S, STOP_TIMEOUT_S, admin_cli, api_key, base_env, pasted_env,
                                  unreachable_index_env)

PROMPT = "You are the assistant of ACME Corp. Answer briefly, in plain words, and cite the policy. " * 3


@dataclass(frozen=True)
class Served:
    address: str
    env: dict[str, str]
    base: str
    model: str
    headers: dict[str, str]
    port: int
    state: Path
    pid: int
    ready: str


def _complete(served: Served, question: str) -> dict:
    body = {"model": served.model, "prompt": PROMPT + question, "max_tokens": 4, "temperature": 0}
    answer = httpx.post(f"{served.base}/completions", json=body, headers=served.headers, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ops")
    env = unreachable_index_env(base_env(tmp))
    port = free_port()
    started = run_blatam(env, "up", "--detach", "--model", "demo", "--port", str(port), "--no-dashboard",
                      "--num-cpus", "2", timeout_s=START_TIMEOUT_S + 60)
    state = tmp / "data" / "blatam-up.json"
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert "Blatam is up." in started.stdout and "Stop with: blatam down" in started.stdout
        headers = api_key(env, "ops", "llm")
        base = f"http://127.0.0.1:{port}/v1"
        model = httpx.get(f"{base}/models", headers=headers, timeout=60).json()["data"][0]["id"]
        served = Served(pasted_env(started.stdout)["RAY_ADDRESS"], env, base, model, headers, port, state,
                        json.loads(state.read_text())["pid"], started.stdout)
        for i in range(3):  # the shared prefix is cached by the first, hit by the others
            _complete(served, f"Question {i}?")
        yield served
    finally:
        if state.exists():
            run_blatam(env, "down", "--timeout", "30", timeout_s=120)


def _listeners(port_range: range | None = None) -> dict[tuple[str, int], str]:
    """Loopback TCP listeners on this machine: (address, port) -> the owning process's name."""
    found = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.ip == "127.0.0.1" and conn.pid:
            if port_range is None or conn.laddr.port in port_range:
                try:
                    found[(conn.laddr.ip, conn.laddr.port)] = psutil.Process(conn.pid).name()
                except psutil.NoSuchProcess:
                    pass
    return found


@pytest.mark.ray
@pytest.mark.slow
def test_behind_haproxy_only_the_gateway_has_a_port_and_it_runs_the_proxys_middlewares(served: Served) -> None:
    assert "HTTP: HAProxy (" in served.ready and "in front of gateway" in served.ready, served.ready
    assert "Ray's plain-text 500" not in served.ready and "LLM: one model replica of llm" in served.ready
    assert _listeners(range(served.port, served.port + 1)) == {("127.0.0.1", served.port): "haproxy"}
    # Serve's direct-ingress ports: the gateway's replica only. The services trust the gateway (no key of their
    # own), so none of them may listen; they inherit the controller's HAProxy flag unless told not to.
    replica_ports = {port for (_, port), name in _listeners(range(30000, 31000)).items() if name.startswith("ray::")}
    assert len(replica_ports) == 1, replica_ports
    (port,) = replica_ports
    open_door = httpx.post(f"http://127.0.0.1:{port}/api/v1/redundancy/analyze", json={"content": "x"}, timeout=30)
    assert open_door.status_code == 401, open_door.text  # the gateway itself, key and all
    unsafe = httpx.get(f"{served.base}/models", timeout=30,
                       headers={**served.headers, "X-Request-ID": "<script>" + "x" * 5000})
    assert unsafe.status_code == 200
    (request_id,) = unsafe.headers.get_list("x-request-id")
    assert len(request_id) <= 128 and "<" not in request_id
    kept = httpx.get(f"{served.base}/models", timeout=30, headers={**served.headers, "X-Request-ID": "trace-42"})
    assert kept.headers.get_list("x-request-id") == ["trace-42"]
    body = {"model": served.model, "prompt": PROMPT + "Stream?", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served.base}/completions", json=body, headers=served.headers, timeout=120) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert s.status_code == 200 and events[-1] == "data: [DONE]" and len(events) >= 3, events


@pytest.mark.ray
@pytest.mark.slow
def test_every_process_on_a_requests_path_runs_at_nice_0(served: Served) -> None:
    # Ray starts workers at nice 15: while the model's threads took both cores, the gateway then got ~3% of a
    # core and 16 requests at once waited seconds for it (SQLite lock waits over 5 s answered 503).
    path = ["haproxy", "ray::ProxyActor", "ray::ServeReplica:gateway:Gateway", "ray::ServeReplica:llm:LLMServer",
            "ray::ServeReplica:redundancy:Redundancy"]
    niceness = cluster_niceness(served.address)
    assert {name: niceness.get(name) for name in path} == {name: {0} for name in path}, niceness


def _json(done) -> dict:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.ray
@pytest.mark.slow
def test_a_second_detached_up_is_refused_while_one_runs(served: Served) -> None:
    again = run_blatam(served.env, "up", "--detach", timeout_s=60)
    assert again.returncode == 1 and f"already running (pid {served.pid}" in again.stderr, again.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_status_lists_every_app_its_replicas_the_shard_and_the_coordinator(served: Served) -> None:
    address, env = served.address, served.env
    status = _json(run_blatam(env, "status", "--address", address, "--json"))
    assert status["problems"] == [] and status["serve"] == "running"
    apps = {a["name"]: a for a in status["applications"]}
    assert set(apps) >= {"gateway", "llm", "redundancy", "export"}
    assert {a["status"] for a in apps.values()} == {"RUNNING"}
    # One model replica behind HAProxy: the API runs in it, no LLMIngress hop (scripts/up_ingress.py fit_llm_front).
    assert {d["name"]: d["replicas"] for d in apps["llm"]["deployments"]} == {"LLMServer": {"RUNNING": 1}}
    (shard,) = status["shards"]
    assert shard["reachable"] and 0 < shard["blocks"] <= shard["capacity_blocks"]
    assert 0 < shard["bytes_used"] <= shard["bytes_capacity"] and shard["seq"] > 0
    assert status["coordinator"]["reachable"] and status["coordinator"]["shards"] == 1
    assert status["coordinator"]["snapshots_on"] is False  # embedded defaults: no Redis

    table = run_blatam({**env, "COLUMNS": "200"}, "status", "--address", address)
    assert table.returncode == 0, table.stderr[-3000:]
    for expected in ("Applications", "LLMServer", "RUNNING 1", "KV shards", "Coordinator: index"):
        assert expected in table.stdout, table.stdout


def own_node_hits(total: dict) -> float:
    """Hit tokens served on the replica's node: its own tier (``replica``) or its shard (``device``)."""
    return total["hit_tokens"].get("replica", 0) + total["hit_tokens"].get("device", 0)


@pytest.mark.ray
@pytest.mark.slow
def test_stats_count_the_hits_of_the_shared_prefix(served: Served) -> None:
    address, env = served.address, served.env
    deadline = time.monotonic() + 90
    while True:  # Ray exports every 10 s; the replica's first counts trail
        stats = _json(run_blatam(env, "stats", "--address", address, "--json"))
        total = stats["total"]
        if own_node_hits(total) > 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert stats["failures"] == [] and stats["endpoints"] == 1
    assert own_node_hits(total) > 0 and total["queried_tokens"] >= total["saved_tokens"]
    assert 0 < total["hit_rate"] <= 1 and total["stored_blocks"] > 0
    assert list(stats["shards"]) and all(name.startswith("kvshard:") for name in stats["shards"])
    table = run_blatam({**env, "COLUMNS": "200"}, "stats", "--address", address)
    assert table.returncode == 0 and "total" in table.stdout and "hit rate" in table.stdout, table.stdout


@pytest.mark.ray
@pytest.mark.slow
def test_monitor_shows_the_request_rate_while_requests_run(served: Served) -> None:
    address, env = served.address, served.env
    stop = threading.Event()

    def traffic() -> None:  # ~1 request/s: under the tenant's default limit of 100 a minute
        i = 100
        while not stop.wait(0.8):
            _complete(served, f"Question {i}?")
            i += 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(12)  # Ray exports every 10 s: the monitor's first interval should see requests
        done = run_blatam({**env, "COLUMNS": "100"}, "monitor", "--address", address, "--interval", "12",
                          "--iterations", "2")
    finally:
        stop.set()
        sender.join(timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frame = done.stdout
    print(frame)  # -s shows what an operator sees
    assert "requests/s" in frame and "KV cache" in frame and "kvshard" not in frame, frame
    last = frame.rsplit("running / waiting", 1)[1].splitlines()[1]  # the last frame's LLM row, in its panel
    row = last.strip("│ ").split()
    assert float(row[0].replace(",", "")) > 0, frame  # requests/s over the last interval
    assert float(row[1].replace(",", "")) > 0, frame  # generated tokens/s


def _shard_blocks(address: str, env: dict[str, str]) -> int:
    return sum(shard["blocks"] for shard in _json(run_blatam(env, "status", "--address", address, "--json"))["shards"])


@pytest.mark.ray
@pytest.mark.slow
def test_persist_clear_load_brings_the_hits_back_and_a_damaged_or_foreign_set_changes_nothing(served: Served,
                                                                                              tmp_path: Path) -> None:
    address, env = served.address, served.env
    _complete(served, "What is the refund policy?")
    held = _shard_blocks(address, env)
    assert held > 0
    backup = tmp_path / "kv-backup"
    parts = _json(run_blatam(env, "cache", "persist", str(backup), "--address", address, "--json"))
    assert [p["ok"] for p in parts] == [True] and parts[0]["blocks"] == held
    assert (backup / "cluster.json").is_file() and (backup / "part-000" / "blocks.safetensors").is_file()

    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    assert _shard_blocks(address, env) == 0
    loaded = _json(run_blatam(env, "cache", "load", str(backup), "--address", address, "--json"))
    assert [p["ok"] for p in loaded] == [True] and loaded[0]["blocks"] == held
    assert _shard_blocks(address, env) == held
    again = _complete(served, "What is the refund policy?")  # the prompt's blocks came back from disk
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16 * (held // 2), again["usage"]

    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    tensors = damaged / "part-000" / "blocks.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-7] ^= 0xFF
    tensors.write_bytes(bytes(data))
    refused = run_blatam(env, "cache", "load", str(damaged), "--address", address)
    assert refused.returncode == 1 and "checksum mismatch" in refused.stdout + refused.stderr, refused.stdout
    assert _shard_blocks(address, env) == 0

    foreign = tmp_path / "foreign"  # a set from another model: its manifests are consistent, its blocks are not ours
    shutil.copytree(backup, foreign)
    part_manifest = foreign / "part-000" / "manifest.json"
    manifest = json.loads(part_manifest.read_text())
    manifest["namespace"]["model_id"] = "someone-elses-model"
    part_manifest.write_text(json.dumps(manifest))
    cluster = json.loads((foreign / "cluster.json").read_text())
    cluster["parts"][0]["manifest_sha256"] = hashlib.sha256(part_manifest.read_bytes()).hexdigest()
    (foreign / "cluster.json").write_text(json.dumps(cluster))
    refused = run_blatam({**env, "COLUMNS": "300"}, "cache", "load", str(foreign), "--address", address)
    assert refused.returncode == 1 and "another model" in refused.stdout, refused.stdout + refused.stderr
    assert _shard_blocks(address, env) == 0
    nothing = run_blatam(env, "cache", "load", str(tmp_path / "nowhere"), "--address", address)
    assert nothing.returncode == 1 and "not a persisted cluster cache" in nothing.stderr, nothing.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_clear_tenant_drops_that_tenants_prompts_only_and_its_tags_survive_persist_and_load(served: Served,
                                                                                           tmp_path: Path) -> None:
    address, env = served.address, served.env
    admin_cli(env, "users", "create", "globex-bot", "--tenant", "globex", "--scopes", "llm", "--password-stdin",
              stdin="a long enough password\n")
    key = json.loads(admin_cli(env, "keys", "create", "--user", "globex-bot", "--name", "t", "--json"))["api_key"]
    globex = replace(served, headers={"Authorization": f"Bearer {key}"})

    def cached(who: Served) -> int:
        return _complete(who, "Which countries do we ship to?")["usage"]["prompt_tokens_details"]["cached_tokens"]

    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    assert cached(served) == 0 and cached(globex) == 0  # tenants never share blocks: each stored its own chain
    assert cached(served) > 0 and cached(globex) > 0
    both = _shard_blocks(address, env)

    # a persisted set keeps which chain is whose: load it into an empty cache, then clear one tenant
    backup = tmp_path / "tagged"
    _json(run_blatam(env, "cache", "persist", str(backup), "--address", address, "--json"))
    _json(run_blatam(env, "cache", "clear", "--address", address, "--json"))
    _json(run_blatam(env, "cache", "load", str(backup), "--address", address, "--json"))
    assert _shard_blocks(address, env) == both

    cleared = _json(run_blatam(env, "cache", "clear", "--tenant", "globex", "--address", address, "--json"))
    assert [o["ok"] for o in cleared] == [True] and 0 < cleared[0]["blocks"] < both, cleared
    assert _shard_blocks(address, env) == both - cleared[0]["blocks"]
    assert cached(globex) == 0  # globex's prompt is computed afresh
    assert cached(served) > 0  # the other tenant's is still cached

    nobody = run_blatam(env, "cache", "clear", "--tenant", "nobody", "--address", address)
    assert nobody.returncode == 0 and "No cached blocks of tenant 'nobody'" in nobody.stdout, nobody.stdout
    blank = run_blatam(env, "cache", "clear", "--tenant", " ", "--address", address)
    assert blank.returncode == 2 and "--tenant needs a tenant id" in blank.stdout, blank.stdout


def test_problems_name_what_is_not_healthy() -> None:
    apps = [AppView("llm", "RUNNING"), AppView("export", "DEPLOY_FAILED")]
    view = CacheView(
        shards=[ShardView("kvshard:f:n1:cpu0", "n1", "cpu0", True, tiers={"redis": {"reachable": False, "detail": "x"}}),
                ShardView("kvshard:f:n2:cpu0", "n2", "cpu0", False, error="no answer within 10 s")],
        coordinator=CoordinatorView(False, error="ActorDiedError"))
    problems = _problems(apps, view)
    assert len(problems) == 4 and "export is DEPLOY_FAILED" in problems[0]
    assert any("tier redis unreachable" in p for p in problems) and any("n2" in p for p in problems)
    assert _problems([AppView("llm", "RUNNING")], CacheView([], None)) == []
    unread = CacheView([], CoordinatorView(True, snapshots_on=True, snapshot_restore_pending=True))
    assert ["could not read its last snapshot" in p for p in _problems([], unread)] == [True]
    assert _problems([], CacheView([], CoordinatorView(True, snapshots_on=True))) == []


@pytest.mark.ray
@pytest.mark.parametrize("verb", ["status", "stats", "monitor"])
def test_an_unreachable_cluster_is_one_line_and_exit_2(verb: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run_blatam(ray_env(tmp_path), verb, "--address", address)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and address in lines[0] and lines[0].startswith(f"blatam {verb}: "), done.stderr


def _haproxy_page(port: int) -> bytes:
    """The error page the HAProxy listening on ``port`` loaded: next to the config its command line names."""
    (pid,) = {c.pid for c in psutil.net_connections(kind="tcp")
              if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    command = psutil.Process(pid).cmdline()
    config = Path(command[command.index("-f") + 1])
    return (config.parent / RAY_PAGE_NAME).read_bytes()


@pytest.mark.ray
@pytest.mark.slow
def test_a_gateway_replica_killed_mid_request_leaves_its_client_a_retryable_answer(served: Served) -> None:
    """Next to last: the gateway restarts. HAProxy's own answer is our page, not Ray's plain-text 500."""
    assert _haproxy_page(served.port) == error_page()
    # This cluster's: below `blatam up` (the other test worker may run a gateway replica of its own).
    (gateway,) = [p for p in psutil.Process(served.pid).children(recursive=True)
                  if p.name() == "ray::ServeReplica:gateway:Gateway"]
    body = {"model": served.model, "prompt": PROMPT + "Tell a long story.", "max_tokens": 1000, "temperature": 0,
            "ignore_eos": True}
    answers: list[httpx.Response | httpx.RemoteProtocolError] = []

    def post() -> None:
        try:
            answers.append(httpx.post(f"{served.base}/completions", json=body, headers=served.headers, timeout=120))
        except httpx.RemoteProtocolError as exc:
            answers.append(exc)

    in_flight = threading.Thread(target=post)
    in_flight.start()
    time.sleep(1.5)  # the gateway has it and waits on the model (1,000 tokens take several seconds)
    assert in_flight.is_alive() and not answers
    gateway.kill()
    in_flight.join(timeout=60)
    (answer,) = answers
    # HAProxy answers a request it sent on a fresh connection to the replica with its error page: ours. One it sent
    # on a reused connection (`http-reuse always` in Ray's config) it may end by closing the client's connection
    # without a response, as a server's keep-alive close looks, so the client retries it; never Ray's plain 500.
    if isinstance(answer, httpx.RemoteProtocolError):
        assert "without sending a response" in str(answer), answer
    else:
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1" and answer.json()["error"]["code"] == "service_unavailable"
    deadline = time.monotonic() + 120  # Serve starts a new gateway replica; every answer meanwhile is JSON
    while True:
        health = httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=30)
        assert health.headers["content-type"].startswith("application/json"), (health.status_code, health.text)
        if health.status_code == 200 and health.json()["status"] == "healthy":
            break
        assert time.monotonic() < deadline, health.text
        time.sleep(0.5)
    assert _complete(served, "Back?")["choices"][0]["text"] is not None


@pytest.mark.ray
@pytest.mark.slow
def test_down_stops_serve_ray_and_the_kv_actors(served: Served) -> None:
    """Last in this module: `blatam down` stops what `up --detach` started, and says so twice over."""
    down = run_blatam(served.env, "down", timeout_s=STOP_TIMEOUT_S + 150)
    assert down.returncode == 0 and f"Stopped `blatam up` (pid {served.pid}): stopped Serve" in down.stdout, down.stdout
    assert not served.state.exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{served.port}/health", timeout=5)
    gone = run_blatam(served.env, "status", "--address", served.address)
    assert gone.returncode == 2 and served.address in gone.stderr, gone.stderr  # its Ray cluster went with it
    twice = run_blatam(served.env, "down", timeout_s=60)
    assert twice.returncode == 0 and "Nothing to stop" in twice.stdout
