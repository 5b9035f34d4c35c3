"""A stand-in for the LLM deployment and the KV coordinator, to test the cache-aware router on real Serve.

`PrefixProbe` reports routing stats the way `LLMServer` does and answers with its replica id; a `Gate`
holds its requests in flight until a test opens it; `StandInCoordinator` answers `route` like
`KVCacheCoordinator`.
"""

from __future__ import annotations

import asyncio

import ray
from ray import serve


BLOCK_SIZE = 16
STATS_PERIOD_S = 0.2


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8)
class PrefixProbe:
    """Reports routing stats like `LLMServer` and answers with its replica id."""

    def __init__(self) -> None:
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.running = 0

    def record_routing_stats(self) -> dict:
        return {
            "shard": f"probe-shard-{self.replica_id}",
            "node_id": ray.get_runtime_context().get_node_id(),
            "namespace": {"model_id": "demo", "dtype": "float32", "block_size": BLOCK_SIZE, "kv_layout": "L2H2D8"},
            "tenant_isolation": True,
            "block_size": BLOCK_SIZE,
            "model_path": None,
            "running": self.running,
            "waiting": 0,
            "max_batch_size": 8,
        }

    async def generate(self, request: dict) -> str:
        self.running += 1
        try:
            if request.get("gate"):  # held in flight until the test opens the gate: no timing race
                await ray.get_actor(request["gate"], namespace="router-test").wait_open.remote()
        finally:
            self.running -= 1
        return self.replica_id


@ray.remote(num_cpus=0)
class Gate:
    """Holds requests until opened, so a test knows they are still running when it sends more."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def wait_open(self) -> None:
        await asyncio.wait_for(self.opened.wait(), 60)

    async def open(self) -> None:
        self.opened.set()


@ray.remote(num_cpus=0)
class StandInCoordinator:
    """Answers `route` like `KVCacheCoordinator`: one shard holds every block asked about."""

    def __init__(self) -> None:
        self.holder: str | None = None
        self.calls = 0

    def set_holder(self, shard: str | None) -> None:
        self.holder = shard

    def route(self, hashes: list) -> list:
        self.calls += 1
        return [(self.holder, len(hashes))] if self.holder else []

    def num_calls(self) -> int:
        return self.calls


def prefix_of(tag: str) -> str:
    # ~800 byte-level tokens of a shared system prompt: 50 full blocks of 16.
    return (f"[{tag}] You are the assistant of tenant {tag}. Follow the policy below. " * 12)[:800]
