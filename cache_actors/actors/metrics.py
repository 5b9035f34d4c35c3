"""Cache metrics through `ray.util.metrics` (exported by Ray as ``ray_kv_cache_*``).

One set per process, created on first use. Token counters have the tiers as
a tag so hit rates per tier have their denominator (``queried_tokens``).
"""

from __future__ import annotations

from functools import lru_cache

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 2500]


class CacheMetrics:
    def __init__(self) -> None:
        self.queried_tokens = Counter("kv_cache_queried_tokens", "Prompt tokens looked up in the cache.", tag_keys=("shard",))
        self.hit_tokens = Counter("kv_cache_hit_tokens", "Prompt tokens served from the cache, per tier.", tag_keys=("shard", "tier"))
        self.stored_blocks = Counter("kv_cache_stored_blocks", "Blocks stored in a shard.", tag_keys=("shard",))
        self.evicted_blocks = Counter("kv_cache_evicted_blocks", "Blocks evicted from a shard.", tag_keys=("shard",))
        self.demoted_blocks = Counter("kv_cache_demoted_blocks", "Evicted hot blocks written to a lower tier.", tag_keys=("shard", "tier"))
        self.prefetched_blocks = Counter("kv_cache_prefetched_blocks", "Blocks prefetched into a shard.", tag_keys=("shard",))
        self.bytes_used = Gauge("kv_cache_bytes_used", "Bytes of blocks held by a shard.", tag_keys=("shard",))
        self.fetch_latency_ms = Histogram(
            "kv_cache_fetch_latency_ms", "Time to find and fetch a prefix.", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("path",)
        )
        self.fallbacks = Counter("kv_cache_fallbacks", "Cache steps given up for recompute.", tag_keys=("reason",))
        self.checksum_mismatches = Counter("kv_cache_checksum_mismatches", "Blocks refused for a bad checksum.", tag_keys=("tier",))
        self.tier_errors = Counter("kv_cache_tier_errors", "Failed or timed-out tier operations.", tag_keys=("tier", "kind"))

    @staticmethod
    def add(counter: Counter, value: float, **tags: str) -> None:
        """``counter.inc`` that accepts 0 (Ray refuses non-positive increments)."""
        if value > 0:
            counter.inc(value, tags=tags)


@lru_cache(maxsize=1)
def metrics() -> CacheMetrics:
    return CacheMetrics()
