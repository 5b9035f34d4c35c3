"""Continuous batching: many sequences share each decode step (no Ray here).

- `ragged_kv`: one preallocated KV buffer with a row per sequence, each row
  at its own length, so sequences join and leave between steps without
  padding or shifting anyone else's KV.
- `detokenizer`: incremental text with stop strings and unfinished UTF-8 held back.
- `sequence`: the state of one request in the batch.
- `scheduler`: the loop that admits (prefill with prefix reuse), steps and retires sequences.
"""

from cache_actors.engine.batching.scheduler import BatcherConfig, ContinuousBatcher, SequenceRequest

__all__ = ["BatcherConfig", "ContinuousBatcher", "SequenceRequest"]
