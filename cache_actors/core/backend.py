"""The cache interface the engine needs (no Ray).

Both the in-process `BaseKVCache` and the Ray client
(`actors.client.DistributedKVCache`) satisfy it, so the engine's request path
is the same with or without a cluster.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch

from cache_actors.codecs import Codec
from cache_actors.core.hashing import BlockHash


class KVCacheBackend(Protocol):
    codec: Codec
    block_size: int

    def match(self, hashes: Sequence[BlockHash], *, limit: int | None = None, tenant: str | None = None) -> Any:
        """Hold and return the longest cached prefix, at most ``limit`` blocks (an object with ``num_blocks``).

        ``hashes`` are all the request's full blocks, so a learning policy sees the whole request.
        ``tenant``: the requester's `hashing.tenant_tag`, given to a chain root fetched from elsewhere.
        """

    def read(self, hit: Any, out: torch.Tensor) -> None:
        """Decode the hit's blocks into a ``[L, 2, H, n*bs, D]`` prefix buffer."""

    def read_blocks(self, hit: Any, out: torch.Tensor) -> None:
        """Decode the hit's blocks into ``out [n, L, 2, H, bs, D]`` (any strides)."""

    def release(self, hit: Any) -> None: ...

    def store(self, hashes: Sequence[BlockHash], start: int, kv_blocks: Callable[[int, int], torch.Tensor], *,
              num_tokens: int | None = None, tenant: str | None = None) -> int:
        """Cache blocks ``start..``; ``tenant`` (`hashing.tenant_tag`) tags a chain's first block."""

    def flush_writes(self) -> None:
        """Finish every `store` still in flight (called before the batcher idles; no-op where writes are synchronous)."""

    def get_stats(self) -> dict[str, Any]: ...

    def clear(self) -> None: ...
