"""The tier interface: bounded, failure-tolerant get/put of serialized blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(slots=True)
class TierCounters:
    """Monotonic counters of one tier (exported as metrics by the shard)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0  # calls not made because the tier was backing off after a failure

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "errors": self.errors,
                "timeouts": self.timeouts, "skipped": self.skipped}


class BlockTier(Protocol):
    """A place for serialized blocks. Never raises on I/O trouble: it counts and answers a miss."""

    name: str
    counters: TierCounters

    async def get_many(self, hashes: Sequence[bytes]) -> list[bytes | None]:
        """The blob of each hash (None where missing or on failure), in order."""
        ...

    async def probe(self) -> tuple[bool, str]:
        """(reachable, detail) for an operator's status view; bounded, never raises."""
        ...

    async def put(self, block_hash: bytes, blob: bytes) -> bool:
        """Store a blob; False if it was not written."""
        ...

    async def close(self) -> None: ...
