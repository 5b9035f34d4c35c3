"""`LLMServer`: the Serve deployment whose replicas run the model with continuous batching.

`LLMReplica` is the replica; it is deployed as ``LLMServer`` either with the
OpenAI API in it (`deployments.llm.front.LLMServerFront`, the default) or
bare, behind an `LLMIngress` (`LLMServer` here). Each replica loads the
model (demo or ``model_path``), connects its engine to
the KV shard of its own device (the replica's local rank picks among a
node's shards when there are several, e.g. one per GPU) and serves every
request through one `ContinuousBatcher`. Handle methods:

- ``generate_stream(request)``: an async generator of events
  (``{"type": "delta", "text", "token_ids"}``..., then ``{"type": "done", ...}``);
  call it with ``handle.options(stream=True)``. Closing it cancels the request
  and frees its batch slot.
- ``generate_events(request)``: every event of the request in one reply, for
  a caller that reads the whole answer (an OpenAI request without
  ``stream``): one Ray reply instead of a streamed generator, which costs
  both processes a millisecond or two of CPU more per request.
- ``generate(request)``: the whole result as one dict.

The request is a `cache_actors.engine.requests.LLMRequest`, or a plain dict of its
fields (see `deployments.llm.requests`). A request that
can never run raises ValueError before any event (the ingress answers 400).
``record_routing_stats`` tells the cache-aware router which shard this replica
uses, the cache namespace (so the router hashes prompts the same way) and its load.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Mapping

import ray
from ray import serve

from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.batching import BatcherConfig
from cache_actors.engine.batching.scheduler import CompileFormat, collect
from cache_actors.engine.demo_model import DEMO_MODEL_ID
from deployments.llm.openai.tokenization import detokenize_body, tokenize_body
from cache_actors.engine.structured import RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS, TokenizerGrammar, compile_response_format
from deployments.llm.metrics import LLMMetrics
from cache_actors.engine.requests import LLMRequest
from deployments.llm.requests import sequence_request
from deployments.llm.settings import LLMSettings
from deployments.llm.threads import replica_threads
from cache_actors.actors.worker_logs import route_package_logs

logger = logging.getLogger(__name__)  # routed to the replica log: `worker_logs.route_package_logs`


def _format_compiler(runner: Any) -> CompileFormat | None:
    """Structured output for this model (None, logged, if its tokenizer cannot be constrained)."""
    # Random weights rarely close a string by themselves: steer them to finish (never used for a real model).
    close_after = RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS if runner.model_id.startswith(DEMO_MODEL_ID) else None
    try:
        grammar = TokenizerGrammar.from_tokenizer(
            runner.tokenizer, vocab_size=runner.vocab_size, eos_token_ids=runner.eos_token_ids,
            close_after_tokens=close_after,
        )
    except Exception:
        logger.exception("structured output unavailable for %s", runner.model_id)
        return None

    def compile_format(response_format: Mapping[str, Any]):  # noqa: ANN202 - factory of constraints
        spec = compile_response_format(response_format, grammar)
        return None if spec is None else spec.new_constraint

    return compile_format


def _replica_identity() -> tuple[str, int | None]:
    """``(replica id, local rank on its node)``; ``("local", None)`` outside a replica (local testing mode)."""
    try:
        context = serve.get_replica_context()
    except Exception:
        return "local", None
    return context.replica_id.unique_id, getattr(context.rank, "local_rank", None)


REPLICA_OPTIONS: dict[str, Any] = {
    "name": "LLMServer",
    "ray_actor_options": {"num_cpus": 0},
    "max_ongoing_requests": 256,
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
}
"""The model deployment's options, with or without the OpenAI API in it (`deployments.llm.front`)."""


class LLMReplica:
    """One model replica: engine, KV shard client and continuous batcher."""

    def __init__(self, args: dict[str, Any] | None = None) -> None:
        route_package_logs()
        self.settings = LLMSettings.model_validate(args or {})
        self.replica_id, local_rank = _replica_identity()
        cache = dict(self.settings.cache)
        if cache.get("enable_distributed") and cache.get("shard_index") is None:
            cache["shard_index"] = local_rank
        self.threads = replica_threads(self.settings.num_threads)
        config = KVCacheConfig(model_path=self.settings.model_path, num_threads=self.threads.threads, **cache)
        self.engine = UltraAdaptiveKVCacheEngine(config)
        runner = self.engine.runner
        self.batcher = self.engine.start_batcher(
            BatcherConfig(
                max_batch_size=self.settings.max_batch_size,
                max_model_len=self.settings.max_model_len,
                max_prefill_tokens=self.settings.max_prefill_tokens,
                idle_prefill_tokens=self.settings.idle_prefill_tokens,
                max_waiting=self.settings.max_waiting,
                stream_interval_s=self.settings.stream_interval_ms / 1000,
            ),
            compile_format=_format_compiler(runner),
        )
        self.model_id = self.settings.served_model_name or runner.model_id
        self.node_id = ray.get_runtime_context().get_node_id()
        self.shard = getattr(self.engine.cache, "shard_name", None)
        self.metrics = LLMMetrics(self.model_id)
        logger.info("LLM replica ready: model %s, shard %s, batch %d, torch threads %s (%s)", self.model_id,
                    self.shard, self.settings.max_batch_size, self.batcher.worker_torch_threads(),
                    self.threads.describe())

    async def generate_stream(self, request: LLMRequest | Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Events of one request (see the module docstring)."""
        parsed = LLMRequest.parse(request)
        seq = sequence_request(parsed, self.engine.runner.prompts, default_max_tokens=self.settings.default_max_tokens,
                               max_model_len=self.batcher.max_model_len)
        # One stream item per token costs the replica's event loop about a millisecond of CPU that the
        # model's threads need: a non-streamed answer comes from the batcher, and is sent, as one item.
        async for event in self.batcher.stream(seq, whole=not parsed.stream_deltas):
            if event["type"] == "done":
                self.metrics.finished(event)
                event = {**event, "replica": self.replica_id, "shard": self.shard}
            elif event["type"] == "error":
                self.metrics.failed()
                raise RuntimeError(event["message"])
            yield event

    async def generate_events(self, request: LLMRequest | Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events `generate_stream` would yield, as one list (see the module docstring)."""
        return [event async for event in self.generate_stream(request)]

    async def generate(self, request: LLMRequest | Mapping[str, Any]) -> dict[str, Any]:
        """``{"text", "token_ids", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", ...}``."""
        return {"model": self.model_id, **await collect(self.generate_stream(request))}

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/tokenize`` (a body the ingress validated): ``{"count", "max_model_len", "tokens"}``."""
        return tokenize_body(self.engine.runner.prompts, dict(body), max_model_len=self.batcher.max_model_len)

    def detokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/detokenize``: ``{"prompt"}``; ValueError for an id outside the vocabulary."""
        return detokenize_body(self.engine.runner.prompts, dict(body))

    def record_routing_stats(self) -> dict[str, Any]:
        """What the cache-aware router needs: our shard, how to hash prompts, our load."""
        load = self.batcher.load()
        self.metrics.load(load)
        return {
            "shard": self.shard,
            "node_id": self.node_id,
            "namespace": self.engine.namespace.to_dict(),
            "tenant_isolation": self.engine.config.tenant_isolation,
            "block_size": self.engine.config.block_size,
            "model_path": self.settings.model_path,
            **load,
        }

    def get_stats(self) -> dict[str, Any]:
        """Engine and cache statistics plus the batcher's (mean batch size, the torch threads its thread runs) and
        the compute dtype (``auto`` resolves per machine: a benchmark must say which it ran)."""
        steps = self.batcher.steps
        return {
            **self.engine.get_stats(),
            **self.batcher.load(),
            "decode_steps": steps,
            "mean_batch_size": self.batcher.step_rows / steps if steps else 0.0,
            "heap_trims": self.batcher.heap.trims,
            "shard": self.shard,
            "torch_threads": self.batcher.worker_torch_threads(),
            "num_cpus": self.threads.cpus,
            "dtype": str(self.engine.runner.dtype).removeprefix("torch."),
        }

    def check_health(self) -> None:
        if not self.batcher.alive:
            raise RuntimeError("the batcher thread died")

    def __del__(self) -> None:
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()


LLMServer = serve.deployment(**REPLICA_OPTIONS)(LLMReplica)
"""The model replicas behind a separate `LLMIngress` (``openai_front: ingress``), called by handle only."""
