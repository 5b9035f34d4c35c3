"""Writes to the local shard whose ``reserve`` is still in flight.

Why: `DistributedKVCache.store` used to wait for its ``reserve`` round trip on
the engine's compute thread, twice per request (the prompt's blocks after the
first token, the generated ones when the request ends), 2-5 ms each on 2
busy cores, while the model's OpenMP threads had nothing to do (16
concurrent requests in one process with the shard actor, A/B interleaved:
749 and 725 tok/s waiting, 759 and 796 written behind). Now a store sends
``reserve``, encodes and checksums its blocks at once (the batch row they come
from is then free to be reused) and leaves them here; they are copied into
their slots and committed when the reply is in: at the next store, before the
next ``match`` (a client still reads its own writes), or when the batcher has
nothing left to do (`DistributedKVCache.flush_writes`).

A finished write's ``commit`` is not a call of its own either: it waits in
`PendingCommits` and rides on the client's next call to the shard (the next
``reserve`` or ``match``, which apply it first), or goes alone when the
batcher idles. Sent alone, the commits of a request were two of its five
shard calls; each call costs the shard's process CPU that, on 2 cores, the
model's threads pay for about twice.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import ray
import torch
from ray.exceptions import RayError

from cache_actors.core.hashing import BlockHash
from cache_actors.core.kv_cache import slot_runs

if TYPE_CHECKING:
    from cache_actors.codecs.base import Codec


Commit = tuple[int, list[bytes], BlockHash]
"""A filled lease: ``(lease id, checksums of its slots, hash of its last block)`` (`KVCacheShard.commit`)."""


@dataclass(slots=True)
class PendingWrite:
    """Blocks ``start..`` of ``hashes``, encoded (row i is block ``start + i``), waiting for ``reserve``'s reply."""

    shard: Any
    reserve: Any  # the ObjectRef of the shard's ReserveReply
    hashes: list[BlockHash]
    start: int
    encoded: dict[str, torch.Tensor]
    sums: list[bytes]

    def new_hashes(self) -> list[BlockHash]:
        """The blocks this write sends (those before ``start`` were already cached)."""
        return self.hashes[self.start :]


class WriteBehind:
    """Pending writes in the order they were made; ``finish`` fills and commits one whose reply is in.

    The engine calls it from its compute thread only; the lock keeps a caller
    on another thread (a benchmark, a test) from finishing a write twice.
    """

    def __init__(self, finish: Callable[[PendingWrite], None]) -> None:
        self._writes: deque[PendingWrite] = deque()
        self._finish = finish
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, write: PendingWrite) -> None:
        with self._lock:
            self._writes.append(write)

    def complete(self, *, wait: bool) -> int:
        """Finish writes in order: every one (``wait``; ``finish`` bounds each wait), or those already answered.

        Returns how many were finished.
        """
        done = 0
        with self._lock:
            while self._writes:
                if not wait and not ray.wait([self._writes[0].reserve], timeout=0)[0]:
                    break
                self._finish(self._writes.popleft())
                done += 1
        return done

    def complete_through(self, block: BlockHash) -> int:
        """Finish writes in order up to the last one that writes `block` (waiting for its reply); 0 if none does.

        Why: the shard declines a reserve whose parent block is still pending
        (a block without its parent saves nothing). A request's generated blocks
        continue its prompt's chain, so their reserve must not overtake the
        prompt's commit: on 2 loaded cores the prompt's reply was not in yet when
        the request ended, and its generated blocks were silently not cached.
        """
        with self._lock:
            last = next((index for index in range(len(self._writes) - 1, -1, -1)
                         if block in self._writes[index].new_hashes()), -1)
            for _ in range(last + 1):
                self._finish(self._writes.popleft())
        return last + 1


class PendingCommits:
    """Commits of one shard not known to be applied: the next call to that shard carries them.

    ``take`` hands the caller everything the call it is about to make must
    carry: commits never sent, and those sent alone (`send_alone`) that may
    still be in flight (Ray does not order calls to an asyncio actor, and a
    client must read its own writes: applying a commit twice is a no-op, the
    lease is gone the second time). Commits of a shard the client has left
    are dropped: their leases went with it, and a lease id means nothing to
    another shard.
    """

    def __init__(self) -> None:
        self._shard: Any = None
        self._unsent: list[Commit] = []
        self._sent_alone: list[Commit] = []
        self._lock = threading.Lock()  # the engine's compute thread, and a test or benchmark on another

    def add(self, shard: Any, commit: Commit) -> None:
        with self._lock:
            if shard is not self._shard:
                self._shard, self._unsent, self._sent_alone = shard, [], []
            self._unsent.append(commit)

    def take(self, shard: Any) -> list[Commit]:
        """What a call to ``shard`` made now must apply first (forgotten here: that call applies them)."""
        with self._lock:
            if shard is not self._shard:
                return []
            carried, self._unsent, self._sent_alone = self._sent_alone + self._unsent, [], []
            return carried

    def send_alone(self) -> None:
        """Send the unsent commits in one call, without waiting (the client is about to idle)."""
        with self._lock:
            if not self._unsent:
                return
            commits, self._unsent = self._unsent, []
            try:
                self._shard.commit_many.remote(commits)
            except RayError:  # the shard is gone: so are its leases
                return
            self._sent_alone.extend(commits)


def fill_slots(pool_parts: Mapping[str, torch.Tensor], encoded: Mapping[str, torch.Tensor], rows: Sequence[int],
               slots: Sequence[int]) -> None:
    """Copy encoded row ``rows[i]`` into pool slot ``slots[i]``, runs of consecutive slots as slice copies."""
    for first, stop, first_slot in slot_runs(list(slots)):
        count = stop - first
        consecutive = list(rows[first:stop]) == list(range(rows[first], rows[first] + count))
        for name, part in pool_parts.items():
            if consecutive:
                source = encoded[name][rows[first] : rows[first] + count]
            else:
                source = encoded[name][torch.tensor(rows[first:stop], dtype=torch.long)]
            part[first_slot : first_slot + count].copy_(source)


def encode_blocks(codec: "Codec", kv_blocks: Callable[[int, int], torch.Tensor],
                  positions: list[int]) -> dict[str, torch.Tensor]:
    """Blocks ``positions`` of a chain, encoded by `codec` into contiguous CPU parts (row i is ``positions[i]``).

    A copy, so the batch row the blocks come from may be reused at once.
    """
    first = positions[0]
    kv = kv_blocks(first, positions[-1] - first + 1)
    rows = [position - first for position in positions]
    if rows != list(range(len(rows))):
        kv = kv[torch.tensor(rows, dtype=torch.long, device=kv.device)]
    return {name: t.contiguous().cpu() for name, t in codec.encode(kv).items()}
