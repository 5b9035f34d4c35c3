"""`InFlight`: which requests the cache-aware router has sent where, and the load that puts on each replica.

Serve tells a router about a request through two ids that are not unique: `internal_request_id` is the
id of the *top-level* request, so every call a replica makes while serving one request shares it (an
ingress opening `n` choices sends them all with one id). A book
keyed by that id alone counts two siblings as one: the second decision takes over the first's entry,
and the first's completion uncounts the second. So:

- a request between the router's choice and Serve's confirmation is keyed by its `PendingRequest`
  object (the same object across Serve's retries), which is unique;
- a confirmed request is filed under its internal id *and* the replica it runs on, and a completion
  (which Serve reports as that pair only) removes one of them: siblings on the same replica are
  interchangeable for load counting.

Pure bookkeeping, no Ray: the router adapter calls it from Serve's hooks.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

from cache_actors.core.hashing import BlockHash


@dataclass
class Tracked:
    """One request between the router's choice and its completion."""

    prompt_tokens: int
    hashes: dict[str, list[BlockHash]]  # replica id -> block hashes in its namespace
    counted_on: Optional[str] = None  # replica whose load count includes this request
    routed_to: Optional[str] = None  # set once Serve confirms the replica accepted it


@dataclass
class _Chosen:
    pending: Any  # the PendingRequest: held so its id() stays unique while it is a key
    internal_id: str
    tracked: Tracked
    chosen_at: float  # when the router first ranked it (the book's clock)
    completed_on: Optional[str] = None  # its completion arrived before its confirmation (see `completed`)


class InFlight:
    """Chosen and running requests, and the in-flight count per replica that they add up to."""

    def __init__(self, max_requests: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_requests = max_requests
        self._clock = clock
        self._chosen: dict[int, _Chosen] = {}
        self._running: dict[str, list[Tracked]] = {}
        self._num_running = 0
        self._load: Counter[str] = Counter()

    # --- reads ----------------------------------------------------------------------------------------
    def load(self, replica_id: str) -> int:
        """Requests chosen for or running on the replica (chosen ones count where they were last ranked first)."""
        return self._load.get(replica_id, 0)

    def chosen(self, pending: Any) -> Optional[Tracked]:
        """The decision already made for this pending request (Serve retries one after a rejection)."""
        entry = self._chosen.get(id(pending))
        return entry.tracked if entry is not None else None

    def __len__(self) -> int:
        return len(self._chosen) + self._num_running

    # --- Serve's events ---------------------------------------------------------------------------------
    def choose(self, pending: Any, internal_id: str, tracked: Tracked, replica_id: str) -> None:
        """The router ranked `replica_id` first for this request: count it there until Serve says where it went."""
        entry = self._chosen.get(id(pending))
        if entry is None:
            entry = self._chosen[id(pending)] = _Chosen(pending, internal_id, tracked, self._clock())
        elif entry.tracked is not tracked:
            self._count(entry.tracked, None)
            entry.tracked = tracked
        entry.completed_on = None  # a new try: whatever completed was the one before
        self._count(tracked, replica_id)
        self._bound()

    def routed(self, pending: Any, internal_id: str, replica_id: str,
               rebuild: Callable[[], Optional[Tracked]]) -> Optional[Tracked]:
        """Serve confirmed the replica accepted the request: it runs there until it completes.

        `rebuild` makes the entry when there is none (it expired, or Serve routed a request the router
        never ranked); returns the confirmed entry, or None when it cannot be built.
        """
        entry = self._chosen.pop(id(pending), None)
        tracked = entry.tracked if entry is not None else None
        if tracked is None:
            tracked = rebuild()
            if tracked is None:
                return None
        if entry is not None and entry.completed_on == replica_id:
            # Serve delivers the completion from another thread: for a fast request it can land first.
            self._count(tracked, None)
            tracked.routed_to = replica_id
            return tracked
        self._start(internal_id, tracked, replica_id)
        return tracked

    def completed(self, internal_id: str, replica_id: str, *, confirms: bool) -> Optional[Tracked]:
        """A request with this id finished on this replica (Serve reports no more than that pair).

        A running one is removed. Otherwise the request completed before it was confirmed: with
        `confirms` (Serve's rejection protocol, where an accepted request is always confirmed first)
        the replica rejected it and Serve will route it again, so it only stops counting there; without
        it Serve never confirms, and the completion is the confirmation: returns the entry so the caller
        can learn where it ran.
        """
        running = self._running.get(internal_id, [])
        for i, tracked in enumerate(running):
            if tracked.routed_to == replica_id:
                self._stop(internal_id, i)
                return None
        for key, entry in list(self._chosen.items()):
            if entry.internal_id != internal_id or entry.tracked.counted_on != replica_id:
                continue
            if confirms:
                # Rejected (Serve routes it again, through `choose`), or accepted and so fast that the
                # completion overtook the confirmation: then `routed` follows for this replica.
                self._count(entry.tracked, None)
                entry.completed_on = replica_id
                return None
            del self._chosen[key]
            self._count(entry.tracked, None)
            entry.tracked.routed_to = replica_id
            return entry.tracked
        return None

    def expire(self, ttl_s: float, abandoned: Callable[[Any], bool] = lambda pending: False) -> int:
        """Forget choices Serve never confirmed within `ttl_s`, or whose request `abandoned` says was given
        up (its caller left while it waited for a replica: Serve tells the router nothing then); returns
        how many."""
        oldest = self._clock() - ttl_s
        stale = [key for key, entry in self._chosen.items()
                 if entry.chosen_at < oldest or abandoned(entry.pending)]
        for key in stale:
            self._count(self._chosen.pop(key).tracked, None)
        return len(stale)

    # --- internals ----------------------------------------------------------------------------------------
    def _start(self, internal_id: str, tracked: Tracked, replica_id: str) -> None:
        tracked.routed_to = replica_id
        self._count(tracked, replica_id)
        self._running.setdefault(internal_id, []).append(tracked)
        self._num_running += 1
        self._bound()

    def _stop(self, internal_id: str, index: int) -> None:
        running = self._running[internal_id]
        self._count(running.pop(index), None)
        self._num_running -= 1
        if not running:
            del self._running[internal_id]

    def _bound(self) -> None:
        """Past `max_requests` drop the oldest running ones: a lost completion must not grow the book forever."""
        while len(self) > self._max_requests and self._running:
            self._stop(next(iter(self._running)), 0)

    def _count(self, tracked: Tracked, replica_id: Optional[str]) -> None:
        if tracked.counted_on == replica_id:
            return
        if tracked.counted_on is not None:
            self._load[tracked.counted_on] -= 1
            if self._load[tracked.counted_on] <= 0:
                del self._load[tracked.counted_on]
        if replica_id is not None:
            self._load[replica_id] += 1
        tracked.counted_on = replica_id
