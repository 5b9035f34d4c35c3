"""Several nodes (`ray.cluster_utils.Cluster`): a prefix computed on node A serves a
request on node B, successors are prefetched to B, and the index follows a node
that leaves. Engines run in actors pinned to their node by a custom resource."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")

from cache_actors.actors.placement import get_or_create_coordinator  # noqa: E402
from tests.cache_actors.test_distributed_cache import wait_until  # noqa: E402
from tests.conftest import require_no_ray_yet  # noqa: E402

pytestmark = pytest.mark.ray

# The bounds of the distributed path are wide here: these tests prove that a prefix crosses nodes, and
# on a loaded 2-core CI host a first cross-node call took longer than the shipped 0.25 s fetch bound,
# so node B fell back to recomputing (correct, but not what is under test).
CONFIG = {"block_size": 16, "max_tokens": 4096, "cache_strategy": "lru", "max_new_tokens": 4,
          "enable_distributed": True, "redis_url": None, "lookup_timeout_s": 20.0,
          "remote_fetch_timeout_s": 20.0, "locate_timeout_s": 10.0, "prefetch_timeout_s": 20.0}
DOC = "Clause {i}: the supplier delivers the goods within thirty days of the order. "


@ray.remote(num_cpus=0)
class EngineHost:
    """An engine (tiny demo model) on one node, as an LLM replica would be."""

    def __init__(self, config: dict[str, Any]) -> None:
        from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
        from cache_actors.engine.demo_model import TINY_SPEC
        from cache_actors.engine.model_runner import ModelRunner

        self.engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(**config), runner=ModelRunner.load(None, demo_spec=TINY_SPEC))

    def run(self, text: str, tenant: str | None = None) -> dict[str, Any]:
        from cache_actors.engine.requests import parse_request

        parsed = parse_request({"text": text, "tenant_id": tenant}, default_max_new_tokens=self.engine.config.max_new_tokens)
        result = self.engine.generate_ids(parsed, self.engine.runner.encode(text))
        return {"tokens": result["token_ids"], "cached": result["cached_tokens"], "tiers": dict(self.engine.cache.tier_blocks)}

    def info(self) -> dict[str, Any]:
        return {"shard": self.engine.cache.shard_name, "spec": self.engine.cache.spec,
                "node": ray.get_runtime_context().get_node_id()}

    def hashes(self, text: str, tenant: str | None = None) -> list[bytes]:
        return self.engine.block_hashes(self.engine.runner.encode(text), tenant)


@pytest.fixture(scope="module")
def cluster():
    require_no_ray_yet()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node_a = cluster.add_node(num_cpus=1, resources={"node_a": 1})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, node_a
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def hosts(cluster):
    a = EngineHost.options(resources={"node_a": 0.5}).remote(CONFIG)
    b = EngineHost.options(resources={"node_b": 0.5}).remote(CONFIG)
    info_a, info_b = ray.get([a.info.remote(), b.info.remote()], timeout=180)
    assert info_a["node"] != info_b["node"] and info_a["shard"] != info_b["shard"]
    return a, b, info_a, info_b


def test_prefix_computed_on_node_a_is_served_on_node_b(hosts):
    a, b, info_a, _ = hosts
    text = "".join(DOC.format(i=i) for i in range(3)) + "Summarise."
    first = ray.get(a.run.remote(text))
    assert first["cached"] == 0
    # Shards report in batches every few tens of ms: wait until the index has A's chain.
    coordinator = get_or_create_coordinator(info_a["spec"])
    last_block = ray.get(a.hashes.remote(text))[-1]
    wait_until(lambda: info_a["shard"] in ray.get(coordinator.where.remote(last_block)))
    second = ray.get(b.run.remote(text))
    assert second["tokens"] == first["tokens"]
    assert second["cached"] > 0
    assert second["tiers"].get("peer", 0) > 0  # fetched from A's shard across nodes


def test_clear_tenant_reaches_the_copies_a_peer_fetched(hosts):
    """Node B copied acme's chain from A's shard: `blatam cache clear --tenant acme` removes it on both nodes."""
    from cache_actors.actors.cluster_admin import clear_shards

    a, b, info_a, info_b = hosts
    text = "".join(DOC.format(i=i) for i in range(10, 13)) + "Which clause applies?"
    other = "".join(DOC.format(i=i) for i in range(20, 23)) + "Which clause applies?"
    assert ray.get(a.run.remote(text, "acme"))["cached"] == 0
    assert ray.get(a.run.remote(other, "globex"))["cached"] == 0
    coordinator = get_or_create_coordinator(info_a["spec"])
    last_block = ray.get(a.hashes.remote(text, "acme"))[-1]
    wait_until(lambda: info_a["shard"] in ray.get(coordinator.where.remote(last_block)))
    assert ray.get(b.run.remote(text, "acme"))["tiers"].get("peer", 0) > 0  # B's shard now holds a copy

    outcomes = {o.name: o for o in clear_shards("acme")}
    assert outcomes[info_a["shard"]].ok and outcomes[info_a["shard"]].blocks > 0
    assert outcomes[info_b["shard"]].ok and outcomes[info_b["shard"]].blocks > 0  # the copy was tagged as acme's
    assert ray.get(b.run.remote(text, "acme"))["cached"] == 0
    assert ray.get(a.run.remote(other, "globex"))["cached"] > 0  # another tenant's chain stays


def test_successor_blocks_are_prefetched_to_the_next_shard(hosts):
    a, b, info_a, info_b = hosts
    long_text = "".join(DOC.format(i=i) for i in range(10, 16))
    ray.get(a.run.remote(long_text + "Question one?"))
    coordinator = get_or_create_coordinator(info_a["spec"])
    last_block = ray.get(a.hashes.remote(long_text))[-1]
    wait_until(lambda: info_a["shard"] in ray.get(coordinator.where.remote(last_block)))  # A's blocks are indexed
    half = long_text[: len(long_text) // 2]
    ray.get(b.run.remote(half))  # B now holds the first half; the coordinator pushes what followed on A
    shard_b = ray.get_actor(info_b["shard"], namespace="blatam-kv")
    wait_until(lambda: ray.get(shard_b.stats.remote())["prefetched_blocks"] > 0, timeout_s=30)
    before = ray.get(b.run.remote(long_text + "Question two?"))
    assert before["tokens"] == ray.get(a.run.remote(long_text + "Question two?"))["tokens"]
    assert before["cached"] >= 16 * (len(long_text) // 16) - 16


def test_index_follows_a_node_that_leaves(cluster, hosts):
    cluster_obj, node_a = cluster
    a, b, info_a, _ = hosts
    text = "".join(DOC.format(i=i) for i in range(30, 33))
    ray.get(a.run.remote(text))
    coordinator = get_or_create_coordinator(info_a["spec"])
    first_block = ray.get(a.hashes.remote(text))[0]
    wait_until(lambda: info_a["shard"] in ray.get(coordinator.where.remote(first_block)))
    cluster_obj.remove_node(node_a)
    wait_until(lambda: info_a["shard"] not in ray.get(coordinator.stats.remote())["shards"], timeout_s=90)
    assert info_a["shard"] not in ray.get(coordinator.where.remote(first_block))
    # node B keeps serving, recomputing what only A had
    result = ray.get(b.run.remote(text + " Again."))
    assert result["tokens"]
