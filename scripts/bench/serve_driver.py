"""Ray and Serve side of `blatam bench serve`: a private cluster, the `llm` app per phase, closed-loop clients.

Clients call ``LLMServer.generate_stream`` through a `DeploymentHandle` made
in this process, so this process's router (cache-aware or pow2) places every
request, as it would for a service calling the LLM. TTFT is taken here, at
the first streamed token.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from scripts.bench.ports import free_loopback_port
from scripts.bench.serve_workloads import RequestRecord, Session, messages_for, unique_prompts
from scripts.serve_stop import stop_serve

REQUEST_TIMEOUT_S = 300.0
SERVER = "LLMServer"
_STATS_KEYS = ("shard", "blocks", "capacity_blocks", "evicted_blocks", "stored_blocks", "tier_blocks", "fallbacks",
               "decode_steps", "mean_batch_size", "bytes_capacity")

# --- cluster ---------------------------------------------------------------------------------------------


@contextmanager
def local_serve(num_cpus: int | None = None) -> Iterator[None]:
    """A private Ray cluster (``address="local"``, never one a `ray start` left here) with Serve on a free port."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_loopback_port()})
        yield
    finally:
        try:
            stop_serve()  # not serve.shutdown(): see scripts.serve_stop
        finally:
            ray.shutdown()


def deploy(args: dict[str, Any], app_name: str, *, timeout_s: float = 300.0) -> Any:
    """Deploy the `llm` app as ``app_name`` with ``args``; a streaming handle to its `LLMServer`.

    Each phase deploys under its own app name: a handle (and its router) made
    in this process for an earlier app of the same name can miss the new
    app's replicas or keep the earlier router class.
    """
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    from deployments.llm import build_llm

    serve.run(build_llm(args), name=app_name, route_prefix=f"/{app_name}/v1", blocking=False)
    deadline = time.monotonic() + timeout_s
    while (status := serve.status().applications.get(app_name)) is None or status.status != ApplicationStatus.RUNNING:
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"the llm app failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the llm app is not RUNNING after {timeout_s:g} s: {status}")
        time.sleep(0.5)
    return serve.get_deployment_handle(SERVER, app_name=app_name).options(stream=True)


def teardown(handle: Any) -> None:
    """Delete the app and kill every KV actor (shards, coordinator) so the next run starts with empty caches."""
    import ray
    from ray import serve

    from cache_actors.actors.spec import NAMESPACE

    handle.shutdown()
    serve.delete(handle.app_name)
    names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e.get("namespace") == NAMESPACE]
    for name in names:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    deadline = time.monotonic() + 30
    while any(e.get("namespace") == NAMESPACE for e in ray.util.list_named_actors(all_namespaces=True)):
        if time.monotonic() > deadline:
            raise TimeoutError("KV actors still listed 30 s after being killed")
        time.sleep(0.2)


def replica_stats(handle: Any) -> list[dict[str, Any]]:
    """`LLMServer.get_stats` of every replica (the keys that matter here)."""
    results = handle.options(stream=False).broadcast("get_stats").results(timeout_s=60)
    return [{k: stats.get(k) for k in _STATS_KEYS} for stats in results]


def router_decisions(handle: Any) -> dict[str, int] | None:
    """Decision counts of this process's cache-aware router (None for Serve's pow2 router)."""
    router = getattr(getattr(getattr(handle, "_router", None), "_asyncio_router", None), "request_router", None)
    decisions = getattr(router, "decisions", None)
    return dict(decisions) if decisions is not None else None


# --- clients ---------------------------------------------------------------------------------------------


async def _one_request(handle: Any, request: dict[str, Any]) -> tuple[RequestRecord, str]:
    record = RequestRecord(sent_s=time.perf_counter(), tenant_id=request.get("tenant_id"))
    parts: list[str] = []
    done: dict[str, Any] | None = None

    async def consume() -> None:
        nonlocal done
        async for event in handle.generate_stream.remote(request):
            if event["type"] == "delta":
                if record.first_token_s is None:
                    record.first_token_s = time.perf_counter()
                parts.append(event["text"])
            elif event["type"] == "done":
                done = event

    try:
        await asyncio.wait_for(consume(), REQUEST_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TimeoutError(f"request {request['request_id']} took over {REQUEST_TIMEOUT_S:g} s") from None
    record.done_s = time.perf_counter()
    if done is None:
        raise RuntimeError(f"request {request['request_id']} ended without a done event")
    record.prompt_tokens = int(done["prompt_tokens"])
    record.completion_tokens = int(done["completion_tokens"])
    record.cached_tokens = int(done.get("cached_tokens") or 0)
    record.server_ttft_ms = done.get("ttft_ms")
    record.replica, record.shard = done.get("replica"), done.get("shard")
    return record, "".join(parts)


async def drive(handle: Any, sessions: list[Session], *, concurrency: int, max_tokens: int,
                on_done: Callable[[], None] = lambda: None) -> list[RequestRecord]:
    """Run ``sessions`` with ``concurrency`` closed-loop clients; one record per request (turn).

    Greedy decoding, so both routings get the same answers and prompts. Any
    failed request fails the run: a benchmark of errors measures nothing.
    """
    queue = collections.deque(sessions)
    records: list[RequestRecord] = []

    async def client() -> None:
        while queue:
            session = queue.popleft()
            answers: list[str] = []
            for turn in range(len(session.turns)):
                request = {"messages": messages_for(session, turn, answers), "tenant_id": session.tenant_id,
                           "sampling": {"max_new_tokens": max_tokens, "temperature": 0.0},
                           "request_id": uuid.uuid4().hex}
                record, text = await _one_request(handle, request)
                answers.append(text)
                records.append(record)
                on_done()

    await asyncio.gather(*(client() for _ in range(min(concurrency, len(sessions)))))
    return records


async def warm_up(handle: Any, replicas: int, *, seed: int, max_rounds: int = 5) -> list[str]:
    """Unmeasured unique requests until every replica has served one; returns the replica ids seen."""
    seen: set[str] = set()
    for round_ in range(max_rounds):
        sessions = unique_prompts(2 * replicas, prompt_tokens=64, seed=seed + 1000 + round_)
        records = await drive(handle, [replace(s, tenant_id=f"warmup-{round_}") for s in sessions],
                              concurrency=2 * replicas, max_tokens=4)
        seen |= {r.replica for r in records if r.replica}
        if len(seen) >= replicas:
            break
    return sorted(seen)
