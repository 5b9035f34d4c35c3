"""Configuration of the KV cache engine.

One pydantic settings model, so every field can come from code, from a
`KV_CACHE_<FIELD>` environment variable or from a YAML file, and is validated
the same way in all three cases.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CacheStrategy(str, enum.Enum):
    """Strategy names users of the original engine know.

    Every strategy stores KV in the same paged block pool; the name picks the
    eviction policy and the storage codec:

    - ``LRU``: evict the least recently used evictable leaf block.
    - ``LFU``: evict the least frequently used leaf (ties: least recent).
    - ``ADAPTIVE`` (default): the adaptive policy of `policies.AdaptivePolicy`.
    - ``PAGED``: same as ADAPTIVE; kept so that configurations written for
      the original engine load. (All strategies are paged here.)
    - ``COMPRESSED``: ADAPTIVE eviction, blocks stored as fp16 (half of fp32)
      and compressed losslessly with zstd when written to disk or Redis.
    - ``QUANTIZED``: ADAPTIVE eviction, blocks stored as int8 or int4
      (``quantization_bits``) with KIVI-style scales.
    """

    LRU = "lru"
    LFU = "lfu"
    ADAPTIVE = "adaptive"
    PAGED = "paged"
    COMPRESSED = "compressed"
    QUANTIZED = "quantized"


ModelDType = Literal["auto", "float32", "float16", "bfloat16"]
CodecName = Literal["native", "fp16", "bf16", "int8", "int4"]


class KVCacheConfig(BaseSettings):
    """Settings of one KV cache engine (and of the model it serves)."""

    model_config = SettingsConfigDict(
        env_prefix="KV_CACHE_",
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    # --- capacity -----------------------------------------------------------
    max_tokens: int = Field(32768, gt=0, description="Tokens of KV the pool may hold.")
    block_size: int = Field(64, gt=0, le=4096, description="Tokens per KV block (only full blocks are cached).")
    max_memory_mb: float | None = Field(
        None, gt=0, description="Byte budget of the pool in MiB; the smaller of this and max_tokens wins."
    )

    # --- policy and storage -------------------------------------------------
    cache_strategy: CacheStrategy = Field(
        CacheStrategy.ADAPTIVE,
        validation_alias=AliasChoices("cache_strategy", "KV_CACHE_STRATEGY", "KV_CACHE_CACHE_STRATEGY"),
    )
    dtype: ModelDType = Field(
        "float32", description="Compute dtype of the model; `auto`: bf16 where the hardware runs it faster "
                               "(CUDA with bf16, a CPU with AMX), else fp32 (fp16 on older GPUs).")
    use_compression: bool = Field(False, description="Lossless zstd for blocks written to disk or Redis.")
    use_quantization: bool = Field(False, description="Store blocks as intN (quantization_bits).")
    quantization_bits: int = Field(8, description="Bits per value of the quantized codec: 8 or 4.")
    codec: CodecName | None = Field(None, description="Explicit storage codec; overrides the strategy's choice.")

    # --- persistence and prefetch ------------------------------------------
    enable_persistence: bool = False
    persistence_path: Path | None = None
    enable_prefetch: bool = True
    prefetch_size: int = Field(4, ge=0, le=1024)

    # --- model ---------------------------------------------------------------
    model_path: str | None = Field(
        None,
        validation_alias=AliasChoices("model_path", "KV_CACHE_MODEL_PATH", "MODEL_PATH"),
        description="Local folder of a Hugging Face causal LM; None means the built-in demo model.",
    )
    max_new_tokens: int = Field(64, gt=0, le=8192, description="Default generation length.")
    num_threads: int | None = Field(None, gt=0, description="torch intra-op threads; None leaves torch's default.")
    packed_weights: bool = Field(True, description="On CPU, run linear layers on oneDNN-packed weights "
                                                   "(cache_actors/engine/packed_linear.py); false: plain F.linear.")
    lean_forward: bool = Field(True, description="A Llama on CPU runs the lean forward (cache_actors/engine/lean_llama.py: "
                                                 "same logits, less time per step); false: Transformers' forward.")
    fused_pointwise: bool = Field(True, description="In the lean forward on CPU in float32, prefills of 512 tokens or more run "
                                                    "rotary, residual adds, RMSNorm and SiLU as kernels compiled by inductor at "
                                                    "load (cache_actors/engine/fused_pointwise.py; needs a C++ compiler, else off); "
                                                    "narrower forwards (decode steps) run them as C++ loops "
                                                    "(cache_actors/engine/pointwise_kernel.py; needs AVX2).")
    attention_kernel: bool = Field(True, description="In the lean forward on CPU in float32 with 64-dim heads and AVX-512 "
                                                     "or AVX2, prefills and decode steps attend with our kernel, built and checked against SDPA at load "
                                                     "(cache_actors/engine/attention_kernel.py; ~30 s once per machine; needs a "
                                                     "C++ compiler, else SDPA).")
    seed: int = 0

    # --- isolation ------------------------------------------------------------
    tenant_isolation: bool = Field(True, description="Salt block keys per tenant so tenants never share KV.")

    # --- distributed cache (Ray shards, coordinator, tiers) --------------------
    enable_distributed: bool = Field(False, description="Serve the cache from Ray shard actors (one per device).")
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("ray_address", "KV_CACHE_RAY_ADDRESS", "RAY_ADDRESS"),
        description="Ray cluster to join (host:port, or auto: the one RAY_ADDRESS or Ray's bootstrap file names), "
                    "with a bounded wait; None starts a private local one (outside Ray).",
    )
    replica_tier_mb: float = Field(
        256.0, ge=0,
        description="With enable_distributed: MiB of blocks each engine keeps in its own process in front of its shard "
                    "(hits without a call to the shard; every block still goes to the shard; dropped when the shard is "
                    "cleared). Capped by max_tokens and max_memory_mb; 0 turns the tier off.",
    )
    cpu_shards: int = Field(1, ge=1, le=64, description="Shards per node without GPUs.")
    shard_index: int | None = Field(
        None, ge=0,
        description="Which of its node's shards this process uses (the LLM replica passes its local rank); "
        "None: its GPU's shard, else a stable choice by worker id.",
    )
    shard_gpus: float = Field(1.0, gt=0, le=1, description="num_gpus of each GPU shard (below 1 to share with a replica).")
    device_resource: str | None = Field(None, description="Custom Ray resource counting devices per node (one shard each).")
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "KV_CACHE_REDIS_URL", "REDIS_URL"),
        description="Redis tier; None turns the tier off.",
    )
    redis_timeout_ms: float = Field(50.0, gt=0, le=1000, description="Bound of one Redis operation.")
    redis_ttl_s: int = Field(3600, gt=0, description="Lifetime of a block in Redis.")
    disk_tier_path: Path | None = Field(None, description="Directory of a local disk tier; None turns it off.")
    lookup_timeout_s: float = Field(1.0, gt=0, le=60, description="Bound of a call from the engine to its shard.")
    remote_fetch_timeout_s: float = Field(0.25, gt=0, le=30, description="Bound for completing a miss from peers and tiers.")
    locate_timeout_s: float = Field(0.1, gt=0, le=30, description="Bound of a shard's question to the coordinator: where are these blocks.")
    prefetch_timeout_s: float = Field(0.5, gt=0, le=60, description="Bound of one prefetch of successor blocks.")
    demote_min_hits: int = Field(2, ge=1, description="Hits after which an evicted block is demoted, not dropped.")

    @field_validator("cache_strategy", mode="before")
    @classmethod
    def _lower_strategy(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower()
        return value

    @field_validator("quantization_bits")
    @classmethod
    def _check_bits(cls, value: int) -> int:
        if value not in (4, 8):
            raise ValueError(f"quantization_bits must be 8 or 4, got {value}")
        return value

    @model_validator(mode="after")
    def _check_persistence(self) -> "KVCacheConfig":
        if self.enable_persistence and self.persistence_path is None:
            raise ValueError("enable_persistence=True needs persistence_path (KV_CACHE_PERSISTENCE_PATH)")
        return self

    # --- derived choices --------------------------------------------------------
    def policy_name(self) -> str:
        """Eviction policy the strategy selects."""
        if self.cache_strategy in (CacheStrategy.LRU, CacheStrategy.LFU):
            return self.cache_strategy.value
        return "adaptive"

    def codec_name(self) -> str:
        """Storage codec: explicit `codec`, else the strategy's, else the flags'."""
        if self.codec is not None:
            return self.codec
        if self.cache_strategy is CacheStrategy.QUANTIZED or self.use_quantization:
            return f"int{self.quantization_bits}"
        if self.cache_strategy is CacheStrategy.COMPRESSED:
            return "fp16"
        return "native"

    def lossless_compression(self) -> str | None:
        """Lossless codec for blocks leaving memory (disk, Redis), if any."""
        if self.use_compression or self.cache_strategy is CacheStrategy.COMPRESSED:
            return "zstd"
        return None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "KVCacheConfig":
        """Load a YAML mapping (optionally under a top-level ``kv_cache:`` key).

        Explicit overrides win over the file; environment variables only fill
        fields that neither sets.
        """
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
        if "kv_cache" in data and isinstance(data["kv_cache"], dict):
            data = data["kv_cache"]
        data.update(overrides)
        return cls(**data)
