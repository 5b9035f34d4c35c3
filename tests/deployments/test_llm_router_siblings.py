"""Calls one replica makes for one request ("siblings") through the cache-aware router, on real Serve.

Serve gives every call a replica makes while serving a request that request's `internal_request_id`.
Our own ingresses give each call its own (`deployments.common.serve_calls`), but a user's deployment
that calls the LLM deployment concurrently does not. Serve's base matching of a routing decision to its
request goes by that id: with this router it handed the first sibling every replica and left the
others waiting forever (the whole call timed out), and the router's in-flight book counted the
siblings as one. `FanOut` plays that user's deployment.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import ray
from ray import serve
from ray.serve._private.constants import RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S
from ray.serve.config import RequestRouterConfig

from deployments.llm.router import CacheAwareRouter
from tests.deployments.router_probe import STATS_PERIOD_S, Gate, PrefixProbe, StandInCoordinator, prefix_of

pytestmark = [pytest.mark.ray]

APP = "llm-router-siblings"
FANOUT_TIMEOUT_S = 30.0


@serve.deployment(ray_actor_options={"num_cpus": 0})
class FanOut:
    """Sends its list of requests to the probe at once, from inside one request (so with one internal id)."""

    def __init__(self, probe) -> None:
        self.probe = probe

    async def run(self, requests: list[dict]) -> list[str]:
        calls = [self.probe.generate.remote(request) for request in requests]
        return list(await asyncio.wait_for(asyncio.gather(*calls), FANOUT_TIMEOUT_S))


@pytest.fixture(scope="module")
def fan_out(serve_instance) -> Iterator:
    coordinator_name = f"router-siblings-{uuid.uuid4().hex[:8]}"
    coordinator = StandInCoordinator.options(name=coordinator_name, namespace="router-test").remote()
    config = RequestRouterConfig(
        request_router_class=CacheAwareRouter,
        request_router_kwargs={"imbalanced_threshold": 2, "share_slack": 1000.0, "coordinator_name": coordinator_name,
                               "coordinator_namespace": "router-test", "coordinator_timeout_s": 2.0, "seed": 5},
        request_routing_stats_period_s=STATS_PERIOD_S,
    )
    probe = PrefixProbe.options(request_router_config=config).bind()
    handle = serve.run(FanOut.bind(probe), name=APP, route_prefix=None)
    time.sleep(5 * STATS_PERIOD_S)  # the replicas' stats have reached the router: it ranks by prefix, not at random
    yield handle
    serve.delete(APP)
    ray.kill(coordinator)


def _requests(tenant: str, count: int, **extra) -> list[dict]:
    return [{"prompt": prefix_of(tenant) + f" choice {i}", "tenant_id": tenant, **extra} for i in range(count)]


def test_siblings_each_get_a_replica(fan_out) -> None:
    for round_ in range(3):
        got = fan_out.run.remote(_requests(f"sib{round_}", 5)).result(timeout_s=FANOUT_TIMEOUT_S + 30)
        assert len(got) == 5 and all(got), got


def test_siblings_in_flight_each_count_toward_the_load_bound(fan_out) -> None:
    """Four held siblings of one prefix: affinity piles them on one replica only up to the in-flight bound
    (2 over the idle one), so the fourth goes to the other replica. Counted as one, all four stayed.

    The router's load is the larger of its own count and Serve's queue-length cache, and that cache can
    stay one high after concurrent requests to a replica: each acceptance sets it to the replica's count
    at that moment, and one applied after another request's completion brings that request back (seen
    here after the test above: +1 on the idle replica let all four stay). So the round starts once those
    entries have timed out.
    """
    time.sleep(RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S + 0.5)
    gate_name = f"router-gate-{uuid.uuid4().hex[:8]}"
    gate = Gate.options(name=gate_name, namespace="router-test").remote()
    try:
        response = fan_out.run.remote(_requests("held", 4, gate=gate_name))
        time.sleep(2.0)  # all four are chosen and sent while the gate holds them
    finally:
        ray.get(gate.open.remote())
    placed = Counter(response.result(timeout_s=FANOUT_TIMEOUT_S + 30))
    ray.kill(gate)
    assert sorted(placed.values()) in ([1, 3], [2, 2]), placed
