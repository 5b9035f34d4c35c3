"""`UltraAdaptiveKVCacheEngine`: the facade users of the original engine know.

It tokenizes a request, reuses the longest cached prefix of full blocks,
prefills the rest, decodes, and stores the new full blocks. The parts (model
runner, block cache) come through the constructor so tests and the Ray
actors can supply their own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import DynamicCache

from cache_actors.backend import KVCacheBackend
from cache_actors.codecs import KVShape, make_codec
from cache_actors.config import KVCacheConfig
from cache_actors.hashing import BlockHash, CacheNamespace, check_test_vector, hash_prompt_blocks
from cache_actors.kv_cache import BaseKVCache, PrefixHit
from cache_actors.kv_layout import block_views, blocks_from_cache, cache_from_buffer, new_prefix_buffer
from cache_actors.model_runner import ModelRunner
from cache_actors.persistence import load_cache, save_cache
from cache_actors.policies import make_policy
from cache_actors.pool import blocks_for_budget
from cache_actors.requests import GenerationRequest, check_context, parse_request
from cache_actors.sampling import find_stop, make_generator, sample_next
from cache_actors.stats import RequestStats
from cache_actors.validation import validate_configuration

logger = logging.getLogger(__name__)


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
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self.runner = runner or ModelRunner.load(self.config.model_path, dtype=self.config.dtype)
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
            from cache_actors.actors.client import DistributedKVCache  # imports Ray only when asked to

            self.cache = DistributedKVCache.from_config(self.config, self.runner, num_blocks)
        else:
            self.cache = cache_cls(
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
        self._compute = threading.Lock()  # one model computation at a time per engine
        self._scratch: torch.Tensor | None = None  # the request's KV buffer, see _prefix_cache
        self.stats = RequestStats()
        if self.config.enable_persistence and self.config.persistence_path and Path(self.config.persistence_path).exists():
            loaded = self.load(self.config.persistence_path)
            logger.info("loaded %d cached blocks from %s", loaded, self.config.persistence_path)

    # --- keys -------------------------------------------------------------------------------
    def root_hash(self, tenant_id: str | None) -> BlockHash:
        """Chain root for a tenant: distinct per tenant when isolation is on."""
        tenant = (tenant_id or "") if self.config.tenant_isolation else ""
        root = self._roots.get(tenant)
        if root is None:
            root = CacheNamespace(**{**self.namespace.to_dict(), "tenant": tenant}).root_hash()
            self._roots[tenant] = root
        return root

    def block_hashes(self, token_ids: Sequence[int], tenant_id: str | None = None) -> list[BlockHash]:
        return hash_prompt_blocks(self.root_hash(tenant_id), token_ids, self.config.block_size)

    def extend_hashes(self, hashes: list[BlockHash], token_ids: Sequence[int], tenant_id: str | None = None) -> list[BlockHash]:
        """Block hashes of ``token_ids`` whose first full blocks have ``hashes``: only the later blocks are hashed."""
        parent = hashes[-1] if hashes else self.root_hash(tenant_id)
        return hashes + hash_prompt_blocks(parent, token_ids[len(hashes) * self.config.block_size :], self.config.block_size)

    def match_prefix(self, token_ids: Sequence[int], tenant_id: str | None = None) -> tuple[list[BlockHash], Any]:
        """The prompt's block hashes and its longest cached prefix, held until ``cache.release``.

        At least one prompt token is always left to compute: the model needs it to give logits.
        """
        hashes = self.block_hashes(token_ids, tenant_id)
        reusable = min(len(hashes), (len(token_ids) - 1) // self.config.block_size) if self.runner.supports_prefix_reuse else 0
        return hashes, self.cache.match(hashes, limit=reusable)

    # --- requests ---------------------------------------------------------------------------
    async def process_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate for one request; see `requests.parse_request` for the fields.

        Raises ValueError for bad input (before any model work).
        """
        parsed = parse_request(request, default_max_new_tokens=self.config.max_new_tokens)
        token_ids = self.runner.encode(parsed.text)
        self._check_context(len(token_ids), parsed.sampling.max_new_tokens)
        return await asyncio.to_thread(self._generate_locked, parsed, token_ids)

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
                parsed = parse_request(request, default_max_new_tokens=self.config.max_new_tokens)
                token_ids = self.runner.encode(parsed.text)
                self._check_context(len(token_ids), parsed.sampling.max_new_tokens)
            except ValueError as exc:
                raise ValueError(f"request {position}: {exc}") from None
            prepared.append((parsed, token_ids))
        return [await asyncio.to_thread(self._generate_locked, p, ids) for p, ids in prepared]

    def _check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        check_context(prompt_tokens, max_new_tokens, self.runner.max_context)

    def _generate_locked(self, request: GenerationRequest, token_ids: list[int]) -> dict[str, Any]:
        with self._compute:
            return self.generate_ids(request, token_ids)

    def generate_ids(self, request: GenerationRequest, token_ids: list[int]) -> dict[str, Any]:
        """Generate for a tokenized, validated request (synchronous)."""
        started = time.perf_counter()
        params = request.sampling
        block_size = self.config.block_size
        hashes, hit = self.match_prefix(token_ids, request.tenant_id)
        try:
            prefix = self._prefix_cache(hit, len(token_ids) + params.max_new_tokens)
            logits, kv = self.runner.prefill(token_ids, prefix)
            generated, finish_reason, text, first_token_at = self._decode(logits, kv, params)
            ttft_ms = (first_token_at - started) * 1000
            # KV exists for the prompt and every generated token fed back (all but the last).
            fed = (token_ids + generated)[: kv.get_seq_length()]
            if self.runner.supports_prefix_reuse:
                chain = self.extend_hashes(hashes, fed, request.tenant_id)
                self.cache.store(chain, hit.num_blocks, lambda first, count: blocks_from_cache(kv, first, count, block_size))
        finally:
            self.cache.release(hit)
        cached_tokens = hit.num_blocks * block_size
        latency_ms = (time.perf_counter() - started) * 1000
        self.stats.record(
            prompt_tokens=len(token_ids), cached_tokens=cached_tokens, completion_tokens=len(generated),
            latency_ms=latency_ms, ttft_ms=ttft_ms,
        )
        return {
            "result": text,
            "cache_hit": cached_tokens > 0,
            "cached_tokens": cached_tokens,
            "prompt_tokens": len(token_ids),
            "completion_tokens": len(generated),
            "finish_reason": finish_reason,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "session_id": request.session_id,
            "token_ids": generated,
            "metadata": {"model": self.runner.model_id, "block_size": block_size, "blocks_reused": hit.num_blocks},
        }

    def _prefix_cache(self, hit: PrefixHit, capacity_tokens: int) -> DynamicCache:
        """The request's model cache: the hit's blocks, then room for the rest.

        NOTE: the buffer is one scratch area reused by every request: the
        compute lock keeps two requests from sharing it, and a request is done
        with it (its new blocks stored, by copy) before the lock is released.
        Room for the whole request means no token's KV is ever copied again.
        """
        geometry = self.runner.geometry
        block_size = self.config.block_size
        capacity = -(-max(capacity_tokens, 1) // block_size) * block_size  # whole blocks, for block_views
        shape = (geometry.num_layers, 2, geometry.num_kv_heads, capacity, geometry.head_dim)
        numel = shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
        if self._scratch is None or self._scratch.numel() < numel:
            self._scratch = new_prefix_buffer(
                geometry.num_layers, geometry.num_kv_heads, capacity, geometry.head_dim, geometry.dtype, self.runner.device
            ).view(-1)
        buffer = self._scratch[:numel].view(shape)
        if hit.num_blocks:
            self.cache.read_blocks(hit, block_views(buffer, block_size)[: hit.num_blocks])
        return cache_from_buffer(buffer, hit.num_blocks * block_size)

    def _decode(self, logits: torch.Tensor, kv: Any, params: Any) -> tuple[list[int], str, str, float]:
        """Sample until a stop; returns tokens, finish reason, text and when the first token was known."""
        generator = make_generator(params)
        stop_ids = set(self.runner.eos_token_ids) | set(params.stop_token_ids)
        generated: list[int] = []
        first_token_at = 0.0
        while True:
            token = sample_next(logits, params, generator)
            first_token_at = first_token_at or time.perf_counter()
            if token in stop_ids:
                return generated, "stop", self.runner.decode(generated), first_token_at
            generated.append(token)
            if params.stop:
                text = self.runner.decode(generated)
                cut = find_stop(text, params.stop)
                if cut is not None:
                    return generated, "stop", text[:cut], first_token_at
            if len(generated) >= params.max_new_tokens:
                return generated, "length", self.runner.decode(generated), first_token_at
            logits = self.runner.step(token, kv)

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
        with self._compute:
            written = save_cache(self.cache, self.persistence_namespace(), target)
        logger.info("persisted %d blocks to %s", written, target)
        return True

    def load(self, path: str | Path | None = None) -> bool:
        """Add the blocks saved at ``path``; raises `PersistenceError` if the file is refused."""
        source = path or self.config.persistence_path
        self._require_local_cache("load")
        if source is None:
            raise ValueError("load() needs a path (or persistence_path in the config)")
        with self._compute:
            load_cache(self.cache, self.persistence_namespace(), source)
        return True

    def _require_local_cache(self, what: str) -> None:
        if not isinstance(self.cache, BaseKVCache):
            raise ValueError(f"{what}() saves an in-process cache; the distributed cache keeps blocks in its shards and tiers")

    def clear_cache(self) -> None:
        with self._compute:
            self.cache.clear()

    def close(self) -> None:
        """Persist on shutdown when persistence is enabled."""
        if self.config.enable_persistence and self.config.persistence_path:
            self.persist(self.config.persistence_path)
