"""What one request does to a `BlockIndex`, without KV tensors.

Shared by the trace simulator (`policy_sim`) and by the shadow caches of the
adaptive policy, so both replay requests exactly as described in
`policy_sim`'s docstring: match the cached prefix, touch and lock it, then
offer each missed block to the policy, evict to make room, insert it under
the previous block and lock it; stop at the first block that is refused or
finds no room; unlock everything at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from cache_actors.core.block_index import BlockIndex, BlockNode


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request's blocks."""

    hits: int  # leading blocks found in the cache
    inserted: int  # missed blocks that were cached
    refused: bool  # the policy refused to admit a block
    no_room: bool  # every cached block was locked: nothing could be evicted


def replay_request(
    index: BlockIndex,
    keys: Sequence[Hashable],
    now: float,
    capacity_blocks: int,
    tokens: Sequence[int] | None = None,
) -> RequestOutcome:
    """Run one request through ``index`` holding at most ``capacity_blocks`` blocks."""
    hits = index.begin_request(keys, now, tokens)
    index.touch(hits, now)
    index.lock(hits)
    held: list[BlockNode] = hits
    n_hit = len(hits)
    parent = hits[-1] if hits else None
    admit = index.policy.admit
    refused = no_room = False
    for i in range(n_hit, len(keys)):
        key = keys[i]
        if not admit(key, parent, now):
            refused = True
            break
        if len(index) >= capacity_blocks and index.pop_victim(now) is None:
            no_room = True
            break
        node = index.insert(key, parent, now, num_tokens=tokens[i] if tokens is not None else 0)
        index.lock((node,))
        held.append(node)
        parent = node
    index.unlock(held, now)
    return RequestOutcome(n_hit, len(held) - n_hit, refused, no_room)
