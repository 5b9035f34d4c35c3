"""The Ultra Adaptive KV Cache.

The pure core (hashing, block index, policies, pool, codecs, persistence,
model runner, engine) imports no Ray; the actor modules wrap it for a cluster.
"""

from cache_actors.config import CacheStrategy, KVCacheConfig
from cache_actors.engine import UltraAdaptiveKVCacheEngine
from cache_actors.kv_cache import BaseKVCache
from cache_actors.persistence import PersistenceError

__all__ = ["BaseKVCache", "CacheStrategy", "KVCacheConfig", "PersistenceError", "UltraAdaptiveKVCacheEngine"]
