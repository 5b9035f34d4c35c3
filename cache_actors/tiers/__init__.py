"""Lower tiers of the distributed KV cache: Redis and local disk (no Ray).

A tier stores serialized blocks (`wire`) under their hash: codec parts,
lossless compression and a checksum that every read verifies. Every call is
bounded in time; a tier that fails or is slow answers "miss" and the request
recomputes, never errors.
"""

from cache_actors.tiers.base import BlockTier, TierCounters
from cache_actors.tiers.disk_tier import DiskTier
from cache_actors.tiers.redis_tier import RedisTier
from cache_actors.tiers.wire import WireError, decode_block, encode_block

__all__ = ["BlockTier", "DiskTier", "RedisTier", "TierCounters", "WireError", "decode_block", "encode_block"]
