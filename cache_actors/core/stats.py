"""Request statistics of the engine: token hit rate and latency percentiles."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

_WINDOW = 10_000  # latencies kept for percentiles (a sliding window, bounded memory)


@dataclass
class RequestStats:
    requests: int = 0
    requests_with_hit: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))
    ttfts_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))

    def record(self, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int, latency_ms: float, ttft_ms: float) -> None:
        self.requests += 1
        self.requests_with_hit += cached_tokens > 0
        self.prompt_tokens += prompt_tokens
        self.cached_tokens += cached_tokens
        self.completion_tokens += completion_tokens
        self.latencies_ms.append(latency_ms)
        self.ttfts_ms.append(ttft_ms)

    @staticmethod
    def _percentiles(values: deque[float], prefix: str) -> dict[str, float]:
        if not values:
            return {f"{prefix}_p50": 0.0, f"{prefix}_p95": 0.0, f"{prefix}_p99": 0.0}
        p50, p95, p99 = np.percentile(np.fromiter(values, dtype=float), [50, 95, 99])
        return {f"{prefix}_p50": float(p50), f"{prefix}_p95": float(p95), f"{prefix}_p99": float(p99)}

    def snapshot(self) -> dict[str, float | int]:
        hit_rate = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {
            "total_requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "token_hit_rate": hit_rate,
            "hit_rate": self.requests_with_hit / self.requests if self.requests else 0.0,
            "miss_rate": 1.0 - (self.requests_with_hit / self.requests) if self.requests else 0.0,
            **self._percentiles(self.latencies_ms, "latency_ms"),
            **self._percentiles(self.ttfts_ms, "ttft_ms"),
        }
