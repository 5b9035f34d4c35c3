"""The Ultra Adaptive KV Cache.

Rooms: `core` (block keys, block index, pool, KV layout, checksums,
`BaseKVCache`, persistence, stats), `policies` (eviction strategies, their
registry, replay and simulator), `codecs`, `cluster` (pure cluster logic),
`tiers` (Redis, disk), `engine` (the inference engine: facade, config, model
runner, demo model, prompts, sampling, batching, structured output) and
`actors`, the only Ray code.

The seed's names resolve lazily, so ``import cache_actors.core.hashing``
loads neither torch nor transformers nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cache_actors.core.kv_cache import BaseKVCache
    from cache_actors.core.persistence import PersistenceError
    from cache_actors.engine.config import CacheStrategy, KVCacheConfig
    from cache_actors.engine.facade import UltraAdaptiveKVCacheEngine

_LAZY = {
    "BaseKVCache": "cache_actors.core.kv_cache",
    "CacheStrategy": "cache_actors.engine.config",
    "KVCacheConfig": "cache_actors.engine.config",
    "PersistenceError": "cache_actors.core.persistence",
    "UltraAdaptiveKVCacheEngine": "cache_actors.engine.facade",
}

__all__ = ["BaseKVCache", "CacheStrategy", "KVCacheConfig", "PersistenceError", "UltraAdaptiveKVCacheEngine"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
