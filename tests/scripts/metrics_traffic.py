"""Metric traffic for the dashboard test, run as a driver of the test's own `ray start --head` cluster.

Two detached actors (namespace ``blatam-metrics-test``) stay alive after this
driver exits, so their processes keep exporting while Prometheus scrapes:

- ``traffic``: the distributed KV cache engine on the tiny demo model, as in an
  LLM replica (its client records queried and hit tokens; its shard stores and
  evicts blocks: the cache is small);
- ``recorder``: what that traffic does not cause (fallbacks, checksum
  mismatches, tier errors, demotions, prefetches, the LLM replica's metrics,
  the router's counters, Serve's HTTP metrics), recorded through the very
  objects that define them in production, so a renamed metric breaks the test.

Run: ``python -m tests.scripts.metrics_traffic ADDRESS`` (prints a JSON line).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import ray

NAMESPACE = "blatam-metrics-test"
SYSTEM = "You are a careful assistant. Answer briefly and cite the policy section. " * 3


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


def main(address: str) -> dict[str, Any]:
    from cache_actors.actors.ray_join import join_ray

    join_ray(address, timeout_s=60, namespace=NAMESPACE, log_to_driver=False)  # the head may still be starting
    traffic = Traffic.options(name="traffic", lifetime="detached").remote()
    recorder = Recorder.options(name="recorder", lifetime="detached").remote()
    cached = ray.get(traffic.run.remote(), timeout=300)
    recorded = ray.get(recorder.record.remote(), timeout=120)
    return {"cached_tokens": cached, "recorded": recorded}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
