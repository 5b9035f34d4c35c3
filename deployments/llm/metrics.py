"""Prometheus metrics of the LLM replicas (through `ray.util.metrics`)."""

from __future__ import annotations

from typing import Any, Mapping

from ray.util.metrics import Counter, Gauge, Histogram

_MS_BOUNDARIES = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class LLMMetrics:
    """Requests, tokens (prompt, cached, generated), TTFT and batch occupancy."""

    def __init__(self, model: str) -> None:
        self._tags = {"model": model}
        keys = ("model",)
        self._requests = Counter("blatam_llm_requests_total", "Finished LLM requests", tag_keys=("model", "finish_reason"))
        self._failed = Counter("blatam_llm_failed_requests_total", "LLM requests that failed in the batcher", tag_keys=keys)
        self._prompt = Counter("blatam_llm_prompt_tokens_total", "Prompt tokens of finished requests", tag_keys=keys)
        self._cached = Counter("blatam_llm_cached_tokens_total", "Prompt tokens served from the KV cache", tag_keys=keys)
        self._generated = Counter("blatam_llm_generated_tokens_total", "Generated tokens", tag_keys=keys)
        self._ttft = Histogram("blatam_llm_ttft_ms", "Time to first token", boundaries=_MS_BOUNDARIES, tag_keys=keys)
        self._running = Gauge("blatam_llm_running_sequences", "Sequences in the decode batch", tag_keys=keys)
        self._waiting = Gauge("blatam_llm_waiting_sequences", "Requests waiting for a batch slot", tag_keys=keys)

    def finished(self, done: Mapping[str, Any]) -> None:
        self._requests.inc(1, {**self._tags, "finish_reason": str(done.get("finish_reason"))})
        self._prompt.inc(done["prompt_tokens"], self._tags)
        if done["cached_tokens"]:
            self._cached.inc(done["cached_tokens"], self._tags)
        if done["completion_tokens"]:
            self._generated.inc(done["completion_tokens"], self._tags)
        if done.get("ttft_ms") is not None:
            self._ttft.observe(done["ttft_ms"], self._tags)

    def failed(self) -> None:
        self._failed.inc(1, self._tags)

    def load(self, load: Mapping[str, int]) -> None:
        self._running.set(load["running"], self._tags)
        self._waiting.set(load["waiting"], self._tags)
