"""The cache's pure core: block keys, the block index, the pool, KV layout, checksums,
`BaseKVCache`, persistence and statistics. No Ray; import the module you need
(this package imports nothing, so ``cache_actors.core.hashing`` stays light)."""
