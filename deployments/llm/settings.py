"""Settings of the `llm` application (serve_config.yaml ``args``, or ``LLM_*`` environment variables).

The same settings reach the ingress, the engine replicas and the router, so
they agree on the model, its context and the limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
"""Read, as Ray reads it, where the app is built: HAProxy answers HTTP instead of Serve's proxies."""
CONTROLLER_HAPROXY_ENV = "BLATAM_CONTROLLER_HAPROXY"
"""Set to 1 in every app's environment by `blatam up --ingress haproxy` (scripts/up_ingress.py): an app without
a route has `HAPROXY_ENV` off in its own environment (so its replicas open no HTTP port), while the controller,
which refuses a custom router on any app's ingress then, runs HAProxy (`deployments.llm.app.openai_front`)."""


class LLMSettings(BaseSettings):
    """What the LLM deployment serves and how much of it at once."""

    model_config = SettingsConfigDict(env_prefix="LLM_", extra="forbid", populate_by_name=True)

    model_path: str | None = Field(
        None,
        validation_alias=AliasChoices("model_path", "LLM_MODEL_PATH", "MODEL_PATH"),
        description="Local Hugging Face model folder; None serves the built-in demo model.",
    )
    model_note: str | None = Field(
        None, description="Why this model is served (e.g. the demo model because the real one could not be pulled); "
                          "shown by /health and /v1/models.")
    served_model_name: str | None = Field(None, description="Name in /v1/models and responses (default: the model id).")
    max_batch_size: int = Field(16, ge=1, le=256, description="Sequences decoded together per replica.")
    max_model_len: int = Field(2048, ge=16, description="Context per sequence (capped at the model's).")
    max_prefill_tokens: int = Field(
        512, ge=1, description="Uncached prompt tokens prefilled between two decode steps; a longer prompt is "
                               "prefilled in chunks (bounds the decode stall; `blatam bench prefill`).")
    idle_prefill_tokens: int = Field(
        4096, ge=1, description="Uncached prompt tokens an iteration may prefill while no sequence is decoding (nobody "
                                "to stall): a lone long prompt is prefilled at once, faster than in chunks.")
    max_waiting: int = Field(1024, ge=1, description="Queued requests per replica before 503.")
    stream_interval_ms: float = Field(
        0.0, ge=0, le=1000,
        description="A streamed answer's chunks leave at most this often after the first token, each with every "
                    "token made meanwhile: fewer chunks through the ingress, gateway and proxy leave the CPU to the "
                    "model (cache_actors/engine/batching/stream_pacing.py). 0: a chunk per token when the replica "
                    "keeps up.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none.")
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    num_threads: int | None = Field(
        None, ge=1, description="torch threads per replica; None: the CPUs Ray reserved for it (LLMServer's "
                                "num_cpus, 1 when it reserved none; deployments/llm/threads.py).")
    openai_front: Literal["auto", "replica", "ingress"] = Field(
        "auto",
        description="Where the app's OpenAI API runs: in the model replicas (`replica`: HTTP reaches the model's "
                    "process with no Serve hop between; with several replicas the proxy picks one without reading "
                    "the prompt), or in an LLMIngress deployment in front (`ingress`: every request routed "
                    "cache-aware, one Serve hop more). `auto`: `replica`, except under HAProxy with cache-aware "
                    "routing, which Ray 2.60 does not allow on an HTTP ingress. The gateway's /v1 calls the "
                    "replicas by handle in every shape (deployments/llm/front.py).")
    routing: Literal["affinity", "pow2"] = Field("affinity", description="Cache-aware routing, or Serve's power of two choices.")
    router: dict[str, Any] = Field(default_factory=dict, description="request_router_kwargs of the cache-aware router.")
    routing_stats_period_s: float = Field(1.0, gt=0, description="How often replicas report load and shard to the router.")
    cache: dict[str, Any] = Field(
        default_factory=lambda: {"enable_distributed": True},
        description="KVCacheConfig overrides (block_size, max_memory_mb, enable_distributed, cpu_shards, redis_url, ...).",
    )
