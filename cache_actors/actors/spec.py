"""What a shard needs to know about the cache it serves (plain data, picklable).

Built once from `KVCacheConfig` and the model geometry by the client, sent
to the shards it creates and registered with the coordinator, which creates
the same shards on nodes that join later. The fingerprint goes into every
shard name and Redis key, so caches of different models, layouts or codecs
never share a shard or a key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from cache_actors.codecs import Codec, KVShape, make_codec

if TYPE_CHECKING:
    from cache_actors.engine.config import KVCacheConfig
    from cache_actors.engine.model_runner import ModelRunner

#: Ray namespace of every cache actor (Serve replicas live in "serve").
NAMESPACE = "blatam-kv"
COORDINATOR_NAME = "kv-coordinator"
SHARD_PREFIX = "kvshard"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every bound of the distributed path, with units in the names."""

    lookup_s: float = 1.0  # client -> its shard (match, reserve)
    remote_fetch_s: float = 0.25  # shard -> coordinator/peer/tier for a request's missing blocks
    locate_s: float = 0.1  # shard -> coordinator "where are these blocks"
    tier_op_s: float = 0.05  # one Redis operation
    report_s: float = 1.0  # shard -> coordinator event batch
    prefetch_s: float = 0.5  # a whole prefetch
    lease_s: float = 30.0  # a client's hold on slots
    coordinator_backoff_s: float = 0.5  # after a failed coordinator call, skip it this long


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Geometry, storage and behaviour shared by all shards of one cache."""

    model_id: str
    model_dtype: str
    kv_layout: str
    codec: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    policy: str = "lru"
    cpu_shards: int = 1
    shard_gpus: float = 1.0
    device_resource: str | None = None
    redis_url: str | None = None
    redis_ttl_s: int = 3600
    compression: str = "lz4"
    disk_tier_path: str | None = None
    prefetch_size: int = 4
    demote_min_hits: int = 2
    event_flush_s: float = 0.05
    health_interval_s: float = 2.0
    snapshot_interval_s: float = 30.0
    max_remote_blocks: int = 64
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"a shard needs at least one block, got num_blocks={self.num_blocks}")
        if self.cpu_shards < 1:
            raise ValueError(f"cpu_shards must be >= 1, got {self.cpu_shards}")

    @property
    def kv_shape(self) -> KVShape:
        return KVShape(self.num_layers, self.num_kv_heads, self.head_dim, self.block_size)

    def make_codec(self) -> Codec:
        return make_codec(self.codec, self.kv_shape, getattr(torch, self.model_dtype))

    def fingerprint(self) -> str:
        """Short digest of everything that makes blocks interchangeable (not sizes or timeouts)."""
        key = {k: v for k, v in asdict(self).items() if k in ("model_id", "model_dtype", "kv_layout", "codec", "block_size")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def shard_name(self, node_id: str, device: str) -> str:
        return f"{SHARD_PREFIX}:{self.fingerprint()}:{node_id}:{device}"

    def redis_prefix(self) -> str:
        return f"blatam:kv:{self.fingerprint()}"


def parse_shard_name(name: str) -> tuple[str, str, str] | None:
    """``(fingerprint, node_id, device)`` of a shard name, or None for other actors."""
    pieces = name.split(":")
    if len(pieces) != 4 or pieces[0] != SHARD_PREFIX:
        return None
    return pieces[1], pieces[2], pieces[3]


def spec_from_config(config: "KVCacheConfig", runner: "ModelRunner", num_blocks: int) -> ShardSpec:
    """Everything the shards of this engine's cache must agree on, from its settings."""
    geometry = runner.geometry
    return ShardSpec(
        model_id=runner.model_id,
        model_dtype=str(geometry.dtype).removeprefix("torch."),
        kv_layout=geometry.layout,
        codec=config.codec_name(),
        num_layers=geometry.num_layers,
        num_kv_heads=geometry.num_kv_heads,
        head_dim=geometry.head_dim,
        block_size=config.block_size,
        num_blocks=num_blocks,
        policy=config.policy_name(),
        cpu_shards=config.cpu_shards,
        shard_gpus=config.shard_gpus,
        device_resource=config.device_resource,
        redis_url=config.redis_url,
        redis_ttl_s=config.redis_ttl_s,
        compression=config.lossless_compression() or "lz4",
        disk_tier_path=str(config.disk_tier_path) if config.disk_tier_path else None,
        prefetch_size=config.prefetch_size if config.enable_prefetch else 0,
        demote_min_hits=config.demote_min_hits,
        timeouts=Timeouts(
            lookup_s=config.lookup_timeout_s,
            remote_fetch_s=config.remote_fetch_timeout_s,
            locate_s=config.locate_timeout_s,
            tier_op_s=config.redis_timeout_ms / 1000,
            prefetch_s=config.prefetch_timeout_s,
        ),
    )
