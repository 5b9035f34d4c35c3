"""Requests a tier in front of the shard served without asking it, reported to the shard later.

Why: the replica tier (`replica_tier`) answers most cached requests from the
replica's own copies and asks the node's shard nothing. The shard's policy
and the coordinator's cluster-wide heat then saw a prefix every replica
reuses as cold: the shard evicted it first, and a new replica (or one whose
copies were dropped by a clear) missed it. So the tier records each request
it served alone (its whole chain and the blocks it reused) and the next
call the client makes to the shard carries them (``reserve`` or ``match``,
as `write_behind.PendingCommits` does with commits); when the batcher idles
they go alone (`DistributedKVCache.flush_writes`). The shard then shows its
policy the request and touches the reused blocks it holds, as its own
lookup would have (`ShardStore.note_reuse`). Nothing here is needed for
correctness: a report lost with a dead shard only leaves its policy less
informed, so reports are bounded and dropped oldest first.
"""

from __future__ import annotations

import threading
from collections import deque

from cache_actors.core.hashing import BlockHash

Reuse = tuple[list[BlockHash], int]
"""A request served without the shard: ``(all its full blocks' hashes, blocks reused from the front)``."""

#: Reports kept for the next call at most (older ones are dropped: they only inform a policy).
MAX_PENDING_REPORTS = 256
#: This many waiting reports are sent alone at once, not held for the next call or idle moment.
SEND_ALONE_AT = 64


class PendingReuse:
    """Reuse reports not sent yet; thread-safe (the engine's compute thread and the batcher's idle flush)."""

    def __init__(self, max_pending: int = MAX_PENDING_REPORTS) -> None:
        self._reports: deque[Reuse] = deque(maxlen=max_pending)
        self._lock = threading.Lock()

    def add(self, hashes: list[BlockHash], reused: int) -> None:
        with self._lock:
            self._reports.append((hashes, reused))  # the oldest goes when full

    def take(self) -> list[Reuse]:
        """Every waiting report (forgotten here: the caller's call carries them)."""
        with self._lock:
            reports = list(self._reports)
            self._reports.clear()
            return reports

    def __len__(self) -> int:
        return len(self._reports)
