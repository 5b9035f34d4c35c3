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
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import ray
import torch

from cache_actors.core.hashing import BlockHash
from cache_actors.core.kv_cache import slot_runs

if TYPE_CHECKING:
    from cache_actors.codecs.base import Codec


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
