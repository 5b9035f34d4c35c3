"""The Ray side of the KV cache: shard actors, the coordinator, placement and the client.

Only the modules in this package import Ray. `client.DistributedKVCache` is
what `UltraAdaptiveKVCacheEngine` uses when ``enable_distributed`` is set.
"""
