"""How much of a request's chain each shard holds (the router's question), in few memory misses.

Pure logic over the coordinator's index (`GlobalIndex.route` calls it). What
one shard holds of a chain is always a prefix of it (a block is cached only
under its parent and evicted only as a leaf), so a shard's bit, once gone,
stays gone along the chain: bisection finds where the bits drop with
O(log n) probes per distinct drop point instead of one per block.

Why probes go to the shards' block sets rather than the location dict: at
10^6 indexed blocks a probe is bound by memory misses, not by Python. A dict
probe with a key that arrived from another process touches the dict's index
table, its entry table and the stored key object (three dependent misses,
about 0.5 us when uniformly spread over a 10^6 index); a set probe touches
the entry table and the key object (about 0.2 us), and a miss on a set is
mostly one cache line. So once one shard is left matching (the usual case: a
prefix lives where the router sent it), bisection probes that shard's set.
With several shards still matching, one dict probe answers for all of them.
(A numpy open-addressing table looked up for all of a request's hashes at
once was tried too: numpy's fixed cost per call put a 40-hash lookup at tens
of microseconds, far above the misses it would have overlapped.)
"""

from __future__ import annotations

from typing import AbstractSet, Callable, Mapping, Sequence


def held_prefixes(
    hashes: Sequence[bytes],
    locations: Mapping[bytes, int],
    blocks_of_bit: Callable[[int], AbstractSet[bytes]],
    shard_bits: int,
) -> dict[int, int]:
    """``{shard bit: leading blocks of hashes it holds}`` for every shard holding the first block.

    ``locations`` maps a block to its location bit mask; ``blocks_of_bit(bit)``
    is the set of blocks of the shard with that bit, which must agree with
    ``locations`` (a block is in it exactly when its mask has the bit).
    """
    n = len(hashes)
    matched: dict[int, int] = {}
    if not n:
        return matched
    current = locations.get(hashes[0], 0) & shard_bits
    position = 0  # every bit of `current` is present at `position`
    while current:
        lo, hi = position, n  # find the first index in (position, n) where a bit of `current` is missing
        if not current & (current - 1):  # one shard left: probe its set
            bit = current.bit_length() - 1
            blocks = blocks_of_bit(bit)
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if hashes[mid] in blocks:
                    lo = mid
                else:
                    hi = mid
            matched[bit] = hi
            break
        while hi - lo > 1:  # several: one dict probe answers for all of them
            mid = (lo + hi) >> 1
            if locations.get(hashes[mid], 0) & current == current:
                lo = mid
            else:
                hi = mid
        kept = locations.get(hashes[hi], 0) & current if hi < n else current
        gone, bit = current & ~kept if hi < n else current, 0
        while gone:
            if gone & 1:
                matched[bit] = hi
            gone >>= 1
            bit += 1
        current, position = kept if hi < n else 0, hi
    return matched


def location_pieces(hashes: Sequence[bytes], locations: Mapping[bytes, int], usable: int) -> list[tuple[int, int, int]]:
    """``[(start, end, mask)]``: consecutive pieces of ``hashes`` and the usable bits held over each.

    Stops before the first block no usable place holds (probed). Assumes every
    place holds one contiguous run of the chain: true of shards (a prefix, see
    above) and of the usual tier contents (the tail a shard evicted and
    demoted). Where a place has a hole that no probe lands on, the piece
    claims the hole too; that is advice only, since the fetcher verifies
    every block and ends the chain at the first one missing. In exchange the
    lookup makes O(log n) probes per place that starts or stops along the
    chain instead of one per block: at 10^6 indexed blocks each probe is
    several memory misses, so a 2000-block prompt would otherwise pay
    thousands of them. Pieces start and end on probed blocks, so a piece's
    first and last blocks are held exactly as its mask says.
    """
    n = len(hashes)
    first = locations.get(hashes[0], 0) & usable if n else 0
    if not first:
        return []
    if n == 1:
        return [(0, 1, first)]
    pieces: list[tuple[int, int, int]] = []
    start, mask = 0, first  # the open piece; its mask is the mask at the left end of each segment popped
    stack = [(0, first, n - 1, locations.get(hashes[n - 1], 0) & usable)]
    while stack:  # segments between two probed blocks, left to right
        lo, lo_mask, hi, hi_mask = stack.pop()
        if lo_mask == hi_mask:
            continue  # one run: the open piece extends to hi
        if hi - lo == 1:
            pieces.append((start, hi, mask))
            if not hi_mask:
                return pieces
            start, mask = hi, hi_mask
            continue
        mid = (lo + hi) >> 1
        mid_mask = locations.get(hashes[mid], 0) & usable
        stack.append((mid, mid_mask, hi, hi_mask))
        stack.append((lo, lo_mask, mid, mid_mask))
    pieces.append((start, n, mask))
    return pieces
