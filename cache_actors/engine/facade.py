"""`UltraAdaptiveKVCacheEngine`: the facade users of the original engine know.

It owns the model runner, the block cache and the cache keys, and converts
the seed's request dict at the edge; generation (prefix reuse, prefill,
decode, stop strings, storing the new full blocks) runs through the same
`ContinuousBatcher` as the LLM deployment, so each of those exists once. The
parts (model runner, block cache) come through the constructor so tests and
the Ray actors can supply their own.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from cache_actors.core.backend import KVCacheBackend
from cache_actors.engine.batching.scheduler import BatcherConfig, CompileFormat, ContinuousBatcher, collect
from cache_actors.engine.batching.sequence import SequenceRequest
from cache_actors.engine.compute_thread import ComputeThread
from cache_actors.codecs import Codec, KVShape, make_codec
from cache_actors.engine.config import KVCacheConfig
from cache_actors.core.hashing import BlockHash, CacheNamespace, check_test_vector, hash_prompt_blocks, tenant_tag
from cache_actors.core.kv_cache import BaseKVCache
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.core.persistence import load_cache, save_cache
from cache_actors.policies import make_policy
from cache_actors.core.pool import blocks_for_budget
from cache_actors.engine.requests import LLMRequest, check_context, parse_request
from cache_actors.core.stats import RequestStats
from cache_actors.engine.validation import validate_configuration

logger = logging.getLogger(__name__)

_OPEN_ENGINES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    """Close engines their owners left open, while the interpreter still runs threads.

    Why: the compute thread is a daemon. If it is inside a torch op (storing a
    finished request's blocks, say) when the interpreter finalizes, it exits as
    it takes the GIL back, and that unwind through torch's C++ frames calls
    std::terminate: the process aborts ("terminate called without an active
    exception") after its work is done, as `blatam bench ttft` once did in CI.
    """
    for engine in list(_OPEN_ENGINES):
        try:
            engine.close()
        except Exception:  # noqa: BLE001 - the process is exiting; say why, close the others
            logger.exception("closing a KV cache engine at exit failed")


class UltraAdaptiveKVCacheEngine:
    """Generate text with a paged, prefix-reusing KV cache."""

    def __init__(
        self,
        config: KVCacheConfig | None = None,
        *,
        runner: ModelRunner | None = None,
        cache_cls: type[BaseKVCache] = BaseKVCache,
        clock: Callable[[], float] = time.monotonic,
        cache: KVCacheBackend | None = None,
    ) -> None:
        check_test_vector()
        self.config = config or KVCacheConfig()
        # Every torch op of this engine runs on this one thread (why: cache_actors.engine.compute_thread).
        self.compute = ComputeThread()
        if self.config.num_threads:
            self.compute.call(torch.set_num_threads, self.config.num_threads)
        self.runner = runner or self.compute.call(
            ModelRunner.load, self.config.model_path, dtype=self.config.dtype, packed_weights=self.config.packed_weights,
            lean=self.config.lean_forward, fused_pointwise=self.config.fused_pointwise,
            attention_kernel=self.config.attention_kernel,
        )
        geometry = self.runner.geometry
        block_size = self.config.block_size
        codec = make_codec(
            self.config.codec_name(),
            KVShape(num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads, head_dim=geometry.head_dim, block_size=block_size),
            geometry.dtype,
        )
        num_blocks = blocks_for_budget(
            block_bytes=codec.bytes_per_block(),
            block_size=block_size,
            max_tokens=self.config.max_tokens,
            max_memory_mb=self.config.max_memory_mb,
        )
        self.cache: KVCacheBackend
        if cache is not None:
            self.cache = cache
        elif self.config.enable_distributed:
            self.cache = self._distributed_cache(codec, num_blocks)
        else:
            self.cache = self.compute.call(
                cache_cls,
                codec=codec,
                block_size=block_size,
                num_blocks=num_blocks,
                policy=make_policy(self.config.policy_name()),
                device=self.runner.device,
                clock=clock,
            )
        self.namespace = CacheNamespace(
            model_id=self.runner.model_id,
            dtype=str(geometry.dtype).removeprefix("torch."),
            block_size=block_size,
            kv_layout=geometry.layout,
        )
        self._roots: dict[str, BlockHash] = {}
        self._batcher: ContinuousBatcher | None = None
        self._batcher_guard = threading.Lock()
        self.stats = RequestStats()
        self._closed = False
        _OPEN_ENGINES.add(self)
        if self.config.enable_persistence and self.config.persistence_path and Path(self.config.persistence_path).exists():
            loaded = self.load(self.config.persistence_path)
            logger.info("loaded %d cached blocks from %s", loaded, self.config.persistence_path)

    def _distributed_cache(self, codec: Codec, num_blocks: int) -> KVCacheBackend:
        """The shard's client, behind a replica-local tier unless ``replica_tier_mb`` is 0 (`actors.replica_tier`)."""
        from cache_actors.actors.client import DistributedKVCache  # imports Ray only when asked to
        from cache_actors.actors.replica_tier import ReplicaTieredCache

        far = DistributedKVCache.from_config(self.config, self.runner, num_blocks)
        budget = min(self.config.replica_tier_mb, self.config.max_memory_mb or self.config.replica_tier_mb)
        near_blocks = blocks_for_budget(block_bytes=codec.bytes_per_block(), block_size=self.config.block_size,
                                        max_tokens=self.config.max_tokens, max_memory_mb=budget)
        if not near_blocks:
            return far
        near = self.compute.call(BaseKVCache, codec=codec, block_size=self.config.block_size, num_blocks=near_blocks,
                                 policy=make_policy(self.config.policy_name()), device=self.runner.device)
        return ReplicaTieredCache(near, far)

    # --- keys -------------------------------------------------------------------------------
    def root_hash(self, tenant_id: str | None) -> BlockHash:
        """Chain root for a tenant: distinct per tenant when isolation is on."""
        tenant = (tenant_id or "") if self.config.tenant_isolation else ""
        root = self._roots.get(tenant)
        if root is None:
            root = CacheNamespace(**{**self.namespace.to_dict(), "tenant": tenant}).root_hash()
            self._roots[tenant] = root
        return root

    def tenant_tag(self, tenant_id: str | None) -> str | None:
        """The tag a tenant's chains carry in the cache (`hashing.tenant_tag`); None where tenants share
        blocks (isolation off), since a shared block belongs to no one tenant."""
        return tenant_tag(tenant_id) if self.config.tenant_isolation else None

    def block_hashes(self, token_ids: Sequence[int], tenant_id: str | None = None) -> list[BlockHash]:
        return hash_prompt_blocks(self.root_hash(tenant_id), token_ids, self.config.block_size)

    def extend_hashes(self, hashes: list[BlockHash], token_ids: Sequence[int], tenant_id: str | None = None) -> list[BlockHash]:
        """Block hashes of ``token_ids`` whose first full blocks have ``hashes``: only the later blocks are hashed."""
        parent = hashes[-1] if hashes else self.root_hash(tenant_id)
        return hashes + hash_prompt_blocks(parent, token_ids[len(hashes) * self.config.block_size :], self.config.block_size)

    def match_prefix(self, token_ids: Sequence[int], tenant_id: str | None = None,
                     hashes: list[BlockHash] | None = None) -> tuple[list[BlockHash], Any]:
        """The prompt's block hashes and its longest cached prefix, held until ``cache.release``.

        ``hashes``: the prompt's block hashes when the caller already computed them.
        At least one prompt token is always left to compute: the model needs it to give logits.
        """
        hashes = self.block_hashes(token_ids, tenant_id) if hashes is None else hashes
        reusable = min(len(hashes), (len(token_ids) - 1) // self.config.block_size) if self.runner.supports_prefix_reuse else 0
        return hashes, self.cache.match(hashes, limit=reusable, tenant=self.tenant_tag(tenant_id))

    # --- requests ---------------------------------------------------------------------------
    def start_batcher(self, config: BatcherConfig | None = None, *, compile_format: CompileFormat | None = None) -> ContinuousBatcher:
        """Start this engine's one `ContinuousBatcher` (the LLM replica passes its limits and structured output).

        The default serves ``process_request``: the model's whole context, and
        a prompt prefilled at once (nobody else's decoding to keep going).
        """
        with self._batcher_guard:
            if self._closed:
                raise RuntimeError("this engine is closed")
            if self._batcher is not None:
                raise RuntimeError("this engine's batcher is already running")
            context = self.runner.max_context
            config = config or BatcherConfig(max_batch_size=4, max_model_len=context, max_prefill_tokens=context)
            self._batcher = ContinuousBatcher(self, config, compile_format=compile_format)
            return self._batcher

    @property
    def batcher(self) -> ContinuousBatcher:
        """The batcher every generation runs through (started with the defaults on first use)."""
        with self._batcher_guard:
            batcher = self._batcher
        return batcher if batcher is not None else self.start_batcher()

    async def process_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate for one request; see `requests.parse_request` for the fields.

        Raises ValueError for bad input (before any model work).
        """
        parsed, token_ids = self._prepare(request)
        return await self.generate(parsed, token_ids)

    async def process_batch(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run several requests in order, so later ones reuse earlier prefixes.

        Every request is validated first: one bad request raises ValueError
        (naming its index) and none runs.
        """
        if not isinstance(requests, (list, tuple)):
            raise ValueError(f"process_batch takes a list of requests, got {type(requests).__name__}")
        prepared = []
        for position, request in enumerate(requests):
            try:
                prepared.append(self._prepare(request))
            except ValueError as exc:
                raise ValueError(f"request {position}: {exc}") from None
        return [await self.generate(parsed, ids) for parsed, ids in prepared]

    def _prepare(self, request: Any) -> tuple[LLMRequest, list[int]]:
        """The seed dict converted at the edge (``text`` is the prompt as is, no chat template), tokenized, checked."""
        parsed = parse_request(request, default_max_new_tokens=self.config.max_new_tokens)
        token_ids = parsed.encode(self.runner)
        check_context(len(token_ids), parsed.sampling.max_new_tokens or self.config.max_new_tokens, self.runner.max_context)
        return parsed, token_ids

    async def generate(self, request: LLMRequest, token_ids: list[int]) -> dict[str, Any]:
        """Generate for a tokenized, validated request through the batcher; the engine's result dict."""
        sequence = SequenceRequest.from_request(request, token_ids, default_max_new_tokens=self.config.max_new_tokens)
        done = await collect(self.batcher.stream(sequence))
        cached_tokens = done["cached_tokens"]
        return {
            "result": done["text"],
            "cache_hit": cached_tokens > 0,
            "cached_tokens": cached_tokens,
            "prompt_tokens": done["prompt_tokens"],
            "completion_tokens": done["completion_tokens"],
            "finish_reason": done["finish_reason"],
            "latency_ms": done["latency_ms"],
            "ttft_ms": done["ttft_ms"] or done["latency_ms"],
            "session_id": request.session_id,
            "token_ids": done["token_ids"],
            "metadata": {
                "model": self.runner.model_id,
                "block_size": self.config.block_size,
                "blocks_reused": cached_tokens // self.config.block_size,
            },
        }

    def generate_ids(self, request: LLMRequest, token_ids: list[int]) -> dict[str, Any]:
        """`generate` for synchronous callers (benchmarks, actors); not from inside a running event loop."""
        return asyncio.run(self.generate(request, token_ids))

    # --- stats, config, persistence ---------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Token hit rate, requests, latency percentiles, bytes, blocks, evictions."""
        cache = self.cache.get_stats()
        return {
            **self.stats.snapshot(),
            **cache,
            "memory_usage": cache["bytes_used"] / cache["bytes_capacity"] if cache["bytes_capacity"] else 0.0,
            "evictions": cache["evicted_blocks"],
            "strategy": self.config.cache_strategy.value,
            "model": self.runner.model_id,
        }

    def validate_configuration(self) -> dict[str, Any]:
        """``{"valid", "issues", "warnings"}`` for this engine's configuration."""
        return validate_configuration(self.config, self.runner, self.cache)

    def persistence_namespace(self) -> dict[str, Any]:
        return self.namespace.to_dict() | {"tenant": None}

    def persist(self, path: str | Path | None = None) -> bool:
        """Save every cached block to ``path`` (default: persistence_path)."""
        target = path or self.config.persistence_path
        self._require_local_cache("persist")
        if target is None:
            raise ValueError("persist() needs a path (or persistence_path in the config)")
        written = self.compute.call(save_cache, self.cache, self.persistence_namespace(), target)
        logger.info("persisted %d blocks to %s", written, target)
        return True

    def load(self, path: str | Path | None = None) -> bool:
        """Add the blocks saved at ``path``; raises `PersistenceError` if the file is refused."""
        source = path or self.config.persistence_path
        self._require_local_cache("load")
        if source is None:
            raise ValueError("load() needs a path (or persistence_path in the config)")
        self.compute.call(load_cache, self.cache, self.persistence_namespace(), source)
        return True

    def _require_local_cache(self, what: str) -> None:
        if not isinstance(self.cache, BaseKVCache):
            raise ValueError(f"{what}() saves an in-process cache; the distributed cache keeps blocks in its shards and tiers")

    def clear_cache(self) -> None:
        self.compute.call(self.cache.clear)

    def close(self) -> None:
        """Stop the batcher (its requests in flight fail), then persist when persistence is enabled.

        Idempotent; an engine still open at interpreter exit is closed then.
        """
        with self._batcher_guard:
            if self._closed:
                return
            self._closed = True
            batcher, self._batcher = self._batcher, None
        _OPEN_ENGINES.discard(self)
        if batcher is not None:
            batcher.close()
        if self.config.enable_persistence and self.config.persistence_path:
            self.persist(self.config.persistence_path)
        self.compute.close()
