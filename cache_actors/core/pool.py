"""Preallocated block storage with O(1) allocate and free.

The pool is sized once from a byte budget and never grows: a full pool makes
the cache evict (or skip caching), never allocate. Each codec part is one
tensor ``[num_blocks, *part_shape]``, so a block is a row index ("slot").
"""

from __future__ import annotations

import math

import torch

PartSpecs = dict[str, tuple[tuple[int, ...], torch.dtype]]


def bytes_per_block(specs: PartSpecs) -> int:
    return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in specs.values())


def blocks_for_budget(
    *, block_bytes: int, block_size: int, max_tokens: int, max_memory_mb: float | None
) -> int:
    """Blocks that fit both the token limit and the byte budget (at least 0)."""
    blocks = max_tokens // block_size
    if max_memory_mb is not None:
        blocks = min(blocks, int(max_memory_mb * 1024 * 1024) // block_bytes)
    return max(blocks, 0)


class BlockPool:
    """Fixed set of block slots in preallocated tensors."""

    def __init__(self, specs: PartSpecs, num_blocks: int, device: torch.device | str = "cpu") -> None:
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.specs = dict(specs)
        self.num_blocks = num_blocks
        self.block_bytes = bytes_per_block(specs)
        self.parts: dict[str, torch.Tensor] = {
            name: torch.empty((num_blocks, *shape), dtype=dtype, device=device) for name, (shape, dtype) in specs.items()
        }
        # LIFO free list: the most recently freed slot is reused first (warm in cache).
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def bytes_total(self) -> int:
        return self.num_blocks * self.block_bytes

    @property
    def bytes_used(self) -> int:
        return self.num_used * self.block_bytes

    def allocate(self) -> int | None:
        """A free slot, or None when the pool is full."""
        return self._free.pop() if self._free else None

    def free(self, slot: int) -> None:
        assert 0 <= slot < self.num_blocks
        self._free.append(slot)

    def reset(self) -> None:
        self._free = list(range(self.num_blocks - 1, -1, -1))

    def write(self, slots: list[int], encoded: dict[str, torch.Tensor]) -> None:
        """Store encoded blocks (each part ``[n, ...]``) into ``slots``."""
        index = torch.tensor(slots, dtype=torch.long, device=next(iter(self.parts.values())).device)
        for name, tensor in self.parts.items():
            tensor.index_copy_(0, index, encoded[name].to(tensor.dtype))

    def read(self, slots: list[int]) -> dict[str, torch.Tensor]:
        """Encoded blocks of ``slots`` (a gathered copy, each part ``[n, ...]``)."""
        index = torch.tensor(slots, dtype=torch.long, device=next(iter(self.parts.values())).device)
        return {name: tensor.index_select(0, index) for name, tensor in self.parts.items()}

    def row(self, slot: int) -> dict[str, torch.Tensor]:
        """Views of one slot's parts (no copy)."""
        return {name: tensor[slot : slot + 1] for name, tensor in self.parts.items()}
