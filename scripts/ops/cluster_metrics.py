"""The cache's and the LLM app's counters, read from Ray's own metrics endpoints.

Every Ray node serves the metrics of its processes in Prometheus text at
``http://<node>:<MetricsExportPort>/metrics``: the ``ray_kv_cache_*``
counters the KV clients and shards record (`cache_actors.actors.metrics`) and
the ``ray_blatam_llm_*`` ones of the LLM replicas (`deployments.llm.metrics`).
These are the numbers the Grafana dashboards show, so `blatam stats` and
`blatam monitor` read them too, with no Prometheus needed: one source of
truth, and no second set of counters in the actors.

Two limits come with that source. Ray exports on its report interval (10 s
by default), so the newest few seconds are not yet counted. And a counter
lives in the process that recorded it: the counts of a replica that died are
gone, so cluster totals can go down after a restart (a rate over such a gap
is shown as 0, never negative).

`parse_metrics` and the summaries are pure (text in, numbers out);
`scrape` does the HTTP, with a timeout per node and the failures listed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 3.0
TIERS = ("replica", "device", "peer", "redis", "disk")


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str, prefixes: tuple[str, ...] = ("ray_kv_cache_", "ray_blatam_llm_")) -> list[Sample]:
    """The samples of `text` (Prometheus exposition format) whose name starts with one of `prefixes`."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefixes):
                out.append(Sample(sample.name, dict(sample.labels), float(sample.value)))
    return out


@dataclass(frozen=True, slots=True)
class ScrapeResult:
    samples: list[Sample]
    failures: list[str]
    """One line per endpoint that did not answer (its URL and why)."""


def scrape(urls: Iterable[str], *, timeout_s: float = SCRAPE_TIMEOUT_S) -> ScrapeResult:
    """Every endpoint's samples; an endpoint that fails is listed, the others still count."""
    samples: list[Sample] = []
    failures: list[str] = []
    with httpx.Client(timeout=timeout_s) as client:
        for url in urls:
            try:
                response = client.get(url)
                response.raise_for_status()
                samples += parse_metrics(response.text)
            except (httpx.HTTPError, ValueError) as exc:
                failures.append(f"{url}: {type(exc).__name__}: {str(exc)[:120]}")
    return ScrapeResult(samples, failures)


def _sum(samples: Iterable[Sample], name: str, by: str | None = None, **where: str) -> dict[str, float]:
    """Sum of `name` over every process, keyed by label `by` ("" when None), keeping samples matching `where`."""
    totals: dict[str, float] = defaultdict(float)
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in where.items()):
            totals[s.labels.get(by, "") if by else ""] += s.value
    return dict(totals)


@dataclass(slots=True)
class ShardCounters:
    """What happened at one shard (or, summed, the cluster) since its processes started."""

    queried_tokens: float = 0.0
    hit_tokens: dict[str, float] = field(default_factory=dict)
    """Per tier the hit came from: device (the shard's pool), redis, disk."""
    stored_blocks: float = 0.0
    evicted_blocks: float = 0.0
    demoted_blocks: dict[str, float] = field(default_factory=dict)
    prefetched_blocks: float = 0.0

    @property
    def hit_total(self) -> float:
        return sum(self.hit_tokens.values())

    @property
    def hit_rate(self) -> float | None:
        """Hit tokens over looked-up tokens (None before any lookup)."""
        return self.hit_total / self.queried_tokens if self.queried_tokens else None

    def add(self, other: ShardCounters) -> None:
        self.queried_tokens += other.queried_tokens
        self.stored_blocks += other.stored_blocks
        self.evicted_blocks += other.evicted_blocks
        self.prefetched_blocks += other.prefetched_blocks
        for mine, theirs in ((self.hit_tokens, other.hit_tokens), (self.demoted_blocks, other.demoted_blocks)):
            for tier, value in theirs.items():
                mine[tier] = mine.get(tier, 0.0) + value

    def to_json(self) -> dict[str, Any]:
        return {"queried_tokens": self.queried_tokens, "hit_tokens": dict(self.hit_tokens),
                "saved_tokens": self.hit_total, "hit_rate": self.hit_rate, "stored_blocks": self.stored_blocks,
                "evicted_blocks": self.evicted_blocks, "demoted_blocks": dict(self.demoted_blocks),
                "prefetched_blocks": self.prefetched_blocks}


@dataclass(slots=True)
class CacheCounters:
    shards: dict[str, ShardCounters]
    fallbacks: dict[str, float]
    """Cache steps given up for recompute, per reason (recorded by the clients, not per shard)."""
    checksum_mismatches: dict[str, float]
    tier_errors: dict[str, float]

    @property
    def total(self) -> ShardCounters:
        total = ShardCounters()
        for counters in self.shards.values():
            total.add(counters)
        return total

    def to_json(self) -> dict[str, Any]:
        return {"shards": {name: c.to_json() for name, c in sorted(self.shards.items())},
                "total": self.total.to_json(), "fallbacks": self.fallbacks,
                "checksum_mismatches": self.checksum_mismatches, "tier_errors": self.tier_errors}


def cache_counters(samples: list[Sample]) -> CacheCounters:
    """The cache's counters per shard and in total."""
    shards: dict[str, ShardCounters] = defaultdict(ShardCounters)
    for shard, value in _sum(samples, "ray_kv_cache_queried_tokens_total", "shard").items():
        shards[shard].queried_tokens = value
    for shard, value in _sum(samples, "ray_kv_cache_stored_blocks_total", "shard").items():
        shards[shard].stored_blocks = value
    for shard, value in _sum(samples, "ray_kv_cache_evicted_blocks_total", "shard").items():
        shards[shard].evicted_blocks = value
    for shard, value in _sum(samples, "ray_kv_cache_prefetched_blocks_total", "shard").items():
        shards[shard].prefetched_blocks = value
    for tier in TIERS:
        for shard, value in _sum(samples, "ray_kv_cache_hit_tokens_total", "shard", tier=tier).items():
            shards[shard].hit_tokens[tier] = value
        for shard, value in _sum(samples, "ray_kv_cache_demoted_blocks_total", "shard", tier=tier).items():
            shards[shard].demoted_blocks[tier] = value
    return CacheCounters(
        shards=dict(shards),
        fallbacks=_sum(samples, "ray_kv_cache_fallbacks_total", "reason"),
        checksum_mismatches=_sum(samples, "ray_kv_cache_checksum_mismatches_total", "tier"),
        tier_errors=_sum(samples, "ray_kv_cache_tier_errors_total", "tier"),
    )


@dataclass(frozen=True, slots=True)
class LLMCounters:
    """The LLM replicas' counters, summed over replicas (and models)."""

    requests: float = 0.0
    failed: float = 0.0
    prompt_tokens: float = 0.0
    cached_tokens: float = 0.0
    generated_tokens: float = 0.0
    ttft_count: float = 0.0
    ttft_sum_ms: float = 0.0
    ttft_buckets: tuple[tuple[float, float], ...] = ()
    """(upper bound ms, cumulative count), ascending, +Inf last."""
    running: float = 0.0
    waiting: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "failed": self.failed, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens, "generated_tokens": self.generated_tokens,
                "ttft_count": self.ttft_count, "ttft_sum_ms": self.ttft_sum_ms, "running": self.running,
                "waiting": self.waiting}


def _one(samples: list[Sample], name: str) -> float:
    return sum(_sum(samples, name).values())


def llm_counters(samples: list[Sample]) -> LLMCounters:
    buckets = _sum(samples, "ray_blatam_llm_ttft_ms_bucket", "le")
    return LLMCounters(
        requests=_one(samples, "ray_blatam_llm_requests_total"),
        failed=_one(samples, "ray_blatam_llm_failed_requests_total"),
        prompt_tokens=_one(samples, "ray_blatam_llm_prompt_tokens_total"),
        cached_tokens=_one(samples, "ray_blatam_llm_cached_tokens_total"),
        generated_tokens=_one(samples, "ray_blatam_llm_generated_tokens_total"),
        ttft_count=_one(samples, "ray_blatam_llm_ttft_ms_count"),
        ttft_sum_ms=_one(samples, "ray_blatam_llm_ttft_ms_sum"),
        ttft_buckets=tuple(sorted(((float(le), n) for le, n in buckets.items()), key=lambda b: b[0])),
        running=_one(samples, "ray_blatam_llm_running_sequences"),
        waiting=_one(samples, "ray_blatam_llm_waiting_sequences"),
    )


@dataclass(frozen=True, slots=True)
class LLMRates:
    """The LLM app between two readings `seconds` apart."""

    seconds: float
    requests_per_s: float
    generated_tokens_per_s: float
    ttft_mean_ms: float | None
    ttft_p50_ms: float | None
    """Upper bound of the bucket holding the median (the histogram's resolution)."""
    cached_share: float | None
    """Prompt tokens served from the cache over all prompt tokens, in the interval."""


def _delta(now: float, before: float) -> float:
    return max(0.0, now - before)  # a replica restart resets its counters: never a negative rate


def llm_rates(before: LLMCounters, now: LLMCounters, seconds: float) -> LLMRates:
    seconds = max(seconds, 1e-9)
    count = _delta(now.ttft_count, before.ttft_count)
    prompt = _delta(now.prompt_tokens, before.prompt_tokens)
    p50 = None
    if count:
        earlier = dict(before.ttft_buckets)
        for bound, cumulative in now.ttft_buckets:
            if _delta(cumulative, earlier.get(bound, 0.0)) >= count / 2:
                p50 = bound
                break
    return LLMRates(
        seconds=seconds,
        requests_per_s=_delta(now.requests, before.requests) / seconds,
        generated_tokens_per_s=_delta(now.generated_tokens, before.generated_tokens) / seconds,
        ttft_mean_ms=_delta(now.ttft_sum_ms, before.ttft_sum_ms) / count if count else None,
        ttft_p50_ms=p50,
        cached_share=_delta(now.cached_tokens, before.cached_tokens) / prompt if prompt else None,
    )
