"""Faults under load (issue 16, part 2): each fault happens while a fixed-rate load runs through the gateway.

The stack runs on the test Serve instance: the gateway, the `llm` app on the
demo model with its distributed KV cache (shard + coordinator actors),
redundancy and export, all on a PostgreSQL and a Redis of their own
(`tests.fault_servers`), which a test can stop and start without touching
the machine's shared servers. For each fault the load sends ``LOAD_S`` of
requests at ``RATE_PER_S`` (`tests.faults.fault_load` has the mix and how an
answer is classified); ``FAULT_AT_S`` in, the fault happens. Then:

- failed (neither ok nor a clean 503 with ``Retry-After``) must be 0; where
  the fault crashes the gateway replica, the process streaming answers to
  the proxy, a body in flight at that instant is cut (counted apart);
- every completion that succeeded equals the model's greedy output without
  any cache (checked per request, streamed or not);
- the stack answers every kind of request again (recovery), and the time
  from the fault to the last refused request is reported;
- every document and export job the services acknowledged still exists.

The table (sent / ok / refused / failed / recovery per fault) is printed and,
with ``BLATAM_FAULTS_JSON`` set, written as JSON for `blatam bench report`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from business_modules.export import repository as _export_repository  # noqa: F401 - registers export migrations
from scripts.bench.load_gen import run_open_loop
from tests.deployments.conftest import ServeInstance, run_app
from tests.fault_servers import ThrowawayPostgres, ThrowawayRedis, missing_servers
from tests.faults.fault_load import PROMPTS, MAX_TOKENS, Ledger, fault_mix
from tests.storage_fixtures import seed_api_keys

pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1200)]

LOAD_S = 16.0
FAULT_AT_S = 5.0
OUTAGE_S = 4.0
"""How long a stopped server stays down."""
RATE_PER_S = 2.0
MAX_IN_FLIGHT = 12
RECOVERY_TIMEOUT_S = 120.0
SECRET = "faults-test-secret-0123456789-abcdefghijklmn"
CORPUS = "drills"
# max_model_len: the agents' context_tokens (4,096 by default; the README says to keep them equal). At 1,024 the
# agents planned a second step's prompt for 4,096 and the LLM refused its 2,031 tokens: how long the demo model's
# first tool call is depends on the prompt, which holds today's date, so the drill failed on some days only.
LLM_ARGS = {"num_replicas": 1, "max_model_len": 4096, "max_batch_size": 8, "max_tokens_limit": 64,
            "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 16}}
RESULTS: dict[str, dict] = {}
CRASHES_THE_STREAMING_PROCESS = frozenset({"gateway_replica_killed"})
"""Faults that kill the process streaming answers to the proxy: a body in flight then can only be cut
(`fault_load.Ledger`); where the gateway survives (an LLM replica killed) it must end with an error event."""


@dataclass
class Stack:
    base_url: str
    key: str
    model: str
    postgres: ThrowawayPostgres
    redis: ThrowawayRedis

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"},
                                 timeout=httpx.Timeout(90, connect=10))


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """Each prompt's greedy completion by the demo model in this process: no cache, no batching."""
    from cache_actors.engine.model_runner import ModelRunner
    from tests.deployments.llm_test_support import greedy_reference

    runner = ModelRunner.load(None)
    return {prompt: greedy_reference(runner, runner.encode(prompt), MAX_TOKENS) for prompt in PROMPTS}


@pytest.fixture(scope="module")
def stack(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = missing_servers()
    if reason:
        pytest.skip(f"fault tests need servers of their own: {reason}")
    from ray import serve

    from deployments.agents import build_agents
    from deployments.app_builder import build_gateway
    from deployments.bul import build_bul
    from deployments.export import build_export
    from deployments.gamma import build_gamma
    from deployments.llm import build_llm
    from deployments.redundancy import build_redundancy
    from scripts.bench.soak_ray import kill_kv_actors

    postgres = ThrowawayPostgres().create()
    redis = ThrowawayRedis(tmp_path_factory.mktemp("faults-redis"))
    redis.start()
    database = {"database_url": postgres.url}
    settings = {"blatam_env": "test", "secret_key": SECRET, **database, "redis_url": redis.url,
                "rate_limit_key_prefix": f"faults-{uuid.uuid4().hex[:8]}", "rate_limit_default": "100000/minute",
                "gateway_request_timeout_s": 60}
    apps = ("llm", "redundancy", "export", "bul", "gamma", "agents", "gateway")
    kill_kv_actors()  # a shard left by an earlier module would bring its own budget
    try:
        run_app(build_llm(LLM_ARGS), name="llm", route_prefix=None)
        run_app(build_redundancy(dict(database)), name="redundancy", route_prefix=None)
        run_app(build_export({**database, "data_dir": str(tmp_path_factory.mktemp("faults-export"))}),
                name="export", route_prefix=None)
        run_app(build_bul({**database, "settings": {"section_tokens_short": 8, "section_tokens_medium": 8}}), name="bul", route_prefix=None)
        run_app(build_gamma(dict(database)), name="gamma", route_prefix=None)
        run_app(build_agents(dict(database)), name="agents", route_prefix=None)
        run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
        keys = asyncio.run(seed_api_keys(postgres.url, "public", secret=SECRET,
                                         users={"drill": ("acme", "llm redundancy export bul gamma agents")}))
        headers = {"Authorization": f"Bearer {keys['drill']}"}
        model = httpx.get(f"{serve_instance.base_url}/v1/models", headers=headers, timeout=60).json()["data"][0]["id"]
        created = httpx.post(f"{serve_instance.base_url}/api/v1/redundancy/corpora", headers=headers, timeout=60,
                             json={"name": CORPUS})
        assert created.status_code == 201, created.text
        yield Stack(serve_instance.base_url, keys["drill"], model, postgres, redis)
    finally:
        for app in apps:
            serve.delete(app)
        kill_kv_actors()
        redis.stop()
        postgres.destroy()
        _print_table()


# --- the faults -------------------------------------------------------------------------------------------------


def _kill_named(name: str, namespace: str, *, no_restart: bool) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=no_restart)


def _replica_name(app: str, deployment: str) -> str:
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [info["Name"] for info in actors(actor_state_name="ALIVE").values()
             if (info.get("Name") or "").startswith(prefix)]
    assert names, f"no live replica of {app}/{deployment}"
    return names[0]


def kill_kv_shard(stack: Stack) -> None:
    from ray import serve

    from cache_actors.actors.spec import NAMESPACE

    shard = serve.get_deployment_handle("LLMServer", app_name="llm").get_stats.remote().result(timeout_s=30)["shard"]
    _kill_named(shard, NAMESPACE, no_restart=False)  # a crash: Ray's restart policy for the actor applies


def kill_coordinator(stack: Stack) -> None:
    from cache_actors.actors.spec import COORDINATOR_NAME, NAMESPACE

    _kill_named(COORDINATOR_NAME, NAMESPACE, no_restart=False)


def kill_llm_replica(stack: Stack) -> None:
    _kill_named(_replica_name("llm", "LLMServer"), "serve", no_restart=True)  # Serve's controller replaces it


def kill_gateway_replica(stack: Stack) -> None:
    _kill_named(_replica_name("gateway", "Gateway"), "serve", no_restart=True)


def restart_redis(stack: Stack) -> None:
    stack.redis.stop()
    time.sleep(OUTAGE_S)
    stack.redis.start()


def restart_postgres(stack: Stack) -> None:
    stack.postgres.stop()
    time.sleep(OUTAGE_S)
    stack.postgres.start()


FAULTS: dict[str, Callable[[Stack], None]] = {
    "kv_shard_killed": kill_kv_shard,
    "coordinator_killed": kill_coordinator,
    "llm_replica_killed": kill_llm_replica,
    "gateway_replica_killed": kill_gateway_replica,
    "redis_restarted": restart_redis,
    "postgres_restarted": restart_postgres,
}


# --- running one -----------------------------------------------------------------------------------------------


async def _until_every_kind_answers(stack: Stack, kinds: list, ledger: Ledger, timeout_s: float) -> float:
    """Seconds until one request of every kind succeeds in a row (the stack has recovered)."""
    start = time.monotonic()
    async with stack.client() as client:
        while True:
            try:
                for seq, kind in enumerate(kinds):
                    await kind.send(client, 1_000_000 + seq)
                return time.monotonic() - start
            except Exception as exc:  # noqa: BLE001 - not yet: try again until the deadline
                if time.monotonic() - start > timeout_s:
                    raise AssertionError(f"not recovered after {timeout_s:g} s: {exc}") from exc
                await asyncio.sleep(1.0)


async def _load_with_fault(stack: Stack, kinds: list, ledger: Ledger, fault: Callable[[Stack], None]) -> int:
    fault_error: list[BaseException] = []

    def inject() -> None:
        try:
            fault(stack)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            fault_error.append(exc)

    async def fault_later(started: float) -> None:
        await asyncio.sleep(FAULT_AT_S)
        ledger.fault_at_s = time.perf_counter() - started
        await asyncio.to_thread(inject)
        ledger.fault_done_s = time.perf_counter() - started

    async with stack.client() as client:
        started = time.perf_counter()
        injector = asyncio.create_task(fault_later(started))
        summary = await run_open_loop(client, kinds, rate_per_s=RATE_PER_S, duration_s=LOAD_S,
                                      max_in_flight=MAX_IN_FLIGHT, on_outcome=ledger.record,
                                      clock=time.perf_counter)
        await injector
    assert not fault_error, f"the fault itself failed: {fault_error[0]!r}"
    return summary.sent


async def _acknowledged_writes_missing(stack: Stack, ledger: Ledger) -> list[str]:
    missing = []
    async with stack.client() as client:
        for doc_id in ledger.documents:
            got = await client.get(f"/api/v1/redundancy/corpora/{CORPUS}/documents/{doc_id}")
            if got.status_code != 200:
                missing.append(f"document {doc_id}: {got.status_code}")
        for kind, ids, path in (("export job", ledger.export_jobs, "/api/v1/export/{}/status"),
                                ("BUL task", ledger.bul_tasks, "/api/v1/bul/tasks/{}/status"),
                                ("Gamma generation", ledger.gamma_generations, "/api/v1/gamma/generations/{}"),
                                ("agent run", ledger.agent_runs, "/api/v1/agents/runs/{}")):
            for job_id in ids:
                got = await client.get(path.format(job_id))
                if got.status_code != 200:
                    missing.append(f"{kind} {job_id}: {got.status_code}")
    return missing


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_under_load(stack: Stack, expected: dict[str, str], fault: str) -> None:
    ledger = Ledger()
    kinds = fault_mix(stack.model, expected, ledger, CORPUS)
    asyncio.run(_until_every_kind_answers(stack, kinds, Ledger(), RECOVERY_TIMEOUT_S))  # healthy before
    ledger = Ledger(crash_cuts_streams=fault in CRASHES_THE_STREAMING_PROCESS)
    kinds = fault_mix(stack.model, expected, ledger, CORPUS)
    sent = asyncio.run(_load_with_fault(stack, kinds, ledger, FAULTS[fault]))
    healthy_after_s = asyncio.run(_until_every_kind_answers(stack, kinds, Ledger(), RECOVERY_TIMEOUT_S))
    missing = asyncio.run(_acknowledged_writes_missing(stack, ledger))
    RESULTS[fault] = {"sent": sent, "ok": ledger.total("ok"), "refused": ledger.total("refused"),
                      "cut": ledger.total("cut"), "failed": ledger.total("failed"), "recovery_s": round(ledger.recovery_s, 1),
                      "healthy_after_load_s": round(healthy_after_s, 1), "acknowledged_writes":
                      ledger.writes, "writes_missing": len(missing),
                      "by_kind": {f"{k}:{v}": n for (k, v), n in sorted(ledger.counts.items())}}
    print(f"\n{fault}: {json.dumps(RESULTS[fault])}")
    assert ledger.total() == sent
    assert ledger.failures == [], "\n".join(ledger.failures[:10])
    assert missing == [], missing[:10]
    assert ledger.total("ok") > 0 and len(ledger.documents) > 0 and len(ledger.export_jobs) > 0
    assert ledger.bul_tasks and ledger.gamma_generations and ledger.agent_runs


def _print_table() -> None:
    if not RESULTS:
        return
    lines = ["", f"{'fault':<24} {'sent':>5} {'ok':>5} {'refused':>8} {'cut':>4} {'failed':>7} {'recovery s':>11} "
                 f"{'writes':>7}"]
    for fault, r in RESULTS.items():
        lines.append(f"{fault:<24} {r['sent']:>5} {r['ok']:>5} {r['refused']:>8} {r['cut']:>4} {r['failed']:>7} "
                     f"{r['recovery_s']:>11} {r['acknowledged_writes'] - r['writes_missing']:>3}/"
                     f"{r['acknowledged_writes']:<3}")
    print("\n".join(lines))
    if target := os.environ.get("BLATAM_FAULTS_JSON"):
        Path(target).write_text(json.dumps(RESULTS, indent=2))


