"""Pure cluster logic (no Ray): the coordinator's global index, prefix routing, a
shard's block store, the shared-memory pool and numpy block parts. The actors
in `cache_actors.actors` wrap these."""
