"""Bound oneDNN's per-shape caches, which otherwise grow a model process's memory with every new prompt length.

A packed linear (`cache_actors.engine.packed_linear`) runs a oneDNN primitive
made for its input's shape; ideep (PyTorch's oneDNN layer) and oneDNN each
keep up to 1,024 of them by default (``LRU_CACHE_CAPACITY``,
``ONEDNN_PRIMITIVE_CACHE_CAPACITY``), with the memory each one holds. Every
distinct row count makes new ones: each prompt length, each group of prompts
prefilled together, each batch size. Measured on this machine (demo model, one
process, prompts of 300 new lengths, heap trimmed after each round): RSS grew
779 -> 1,098 MiB and flattened only once the caches were full; with both
capacities at 8 it stayed at 664 MiB. The soak through the gateway read that
growth as a leak: a backlog's new prefill groups stepped the replica up by
40-100 MiB (850 -> 952 MiB in one CI run).

`CAPACITY` bounds both. A decode step's shapes (at most the batch sizes, 1-16,
times five linear shapes) stay cached; a prefill of a new length costs what
it always did, one primitive made per linear shape (~0.5 ms each, measured:
1,042 us for a first call at a new row count, 448 us after). Batch-16 decode
throughput and a 700-token prefill measured the same at 64 as at the default
(within this machine's noise). The variables must be set before the process's
first oneDNN call, so `bound_primitive_caches` runs at the start of a model
load; a value the operator set in the environment wins.
"""

from __future__ import annotations

import os

CAPACITY = 128
"""Primitives each cache keeps: above a decode step's working set (16 batch sizes x 5 shapes), far below 1,024."""
VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def bound_primitive_caches(capacity: int = CAPACITY) -> dict[str, str]:
    """Set both capacities unless already set; what they are now (read at the first oneDNN call, then fixed)."""
    for name in VARIABLES:
        os.environ.setdefault(name, str(capacity))
    return {name: os.environ[name] for name in VARIABLES}
