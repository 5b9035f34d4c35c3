"""A block pool in shared memory, mapped by its shard and by same-node clients (no Ray).

Measured on this machine (notes in the module docs of `actors.client`): a
write into Ray's object store runs at ~1.8 GB/s (fresh shared-memory pages
per object), against ~10 GB/s for a copy into warm memory, and an actor that
returns a block as numpy re-serializes it. So the shard keeps its pool in one
anonymous ``memfd`` that it allocates once; clients on the same node map it
through ``/proc/<pid>/fd/<fd>`` and copy blocks in and out directly, while
the slots they touch are leased by the shard (see `shard_store`). Between
nodes, blocks travel through the object store instead.

The memfd has no name in the file system: when the shard dies its memory is
freed as soon as the last client unmaps it, so a crashed shard leaks nothing.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import torch

from cache_actors.core.pool import BlockPool, PartSpecs

_ALIGN = 4096
#: The clear generation: one little-endian u64 in a page after the parts (see `SharedBlockPool.generation`).
_GENERATION = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class PoolHandle:
    """What a client needs to map a shard's pool (picklable, small)."""

    pid: int
    fd: int
    nbytes: int
    num_blocks: int
    parts: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, per-block shape, dtype name)
    epoch: str

    @property
    def path(self) -> str:
        return f"/proc/{self.pid}/fd/{self.fd}"

    def specs(self) -> PartSpecs:
        return {name: (tuple(shape), getattr(torch, dtype)) for name, shape, dtype in self.parts}


def _layout(specs: PartSpecs, num_blocks: int) -> tuple[list[tuple[str, int, int]], int]:
    """``[(part, offset, numel)]`` and total bytes, each part aligned to a page; the last page is the control page."""
    offset = 0
    layout = []
    for name, (shape, dtype) in specs.items():
        numel = num_blocks * math.prod(shape)
        layout.append((name, offset, numel))
        offset += -(-numel * dtype.itemsize // _ALIGN) * _ALIGN
    return layout, offset + _ALIGN


class SharedBlockPool(BlockPool):
    """`BlockPool` whose part tensors are views of one shared mapping."""

    def __init__(self, specs: PartSpecs, num_blocks: int, mapping: mmap.mmap, *, fd: int | None, handle: PoolHandle) -> None:
        # NOTE: BlockPool.__init__ would allocate private tensors; set its fields here instead.
        self.specs = dict(specs)
        self.num_blocks = num_blocks
        self.block_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs.values())
        layout, _ = _layout(self.specs, num_blocks)
        self.parts = {
            name: torch.frombuffer(mapping, dtype=specs[name][1], count=numel, offset=offset).view(num_blocks, *specs[name][0])
            if numel
            else torch.empty((0, *specs[name][0]), dtype=specs[name][1])
            for name, offset, numel in layout
        }
        self._free = list(range(num_blocks - 1, -1, -1))
        self._mapping = mapping
        self._fd = fd
        self.handle = handle
        self._control = len(mapping) - _ALIGN

    @property
    def generation(self) -> int:
        """How many times the owner dropped blocks by request (`bump_generation`), read from shared memory.

        Why: a client that keeps copies of blocks in its own process (`actors.replica_tier`) must
        forget them when an operator or a tenant clears the shard, and reading one word of the
        mapping costs nothing next to asking the shard on every request."""
        return _GENERATION.unpack_from(self._mapping, self._control)[0]

    def bump_generation(self) -> int:
        """Tell every mapper that blocks were dropped on request (the owner calls this; one writer)."""
        value = self.generation + 1
        _GENERATION.pack_into(self._mapping, self._control, value)
        return value

    def owner_alive(self) -> bool:
        """Whether the owner still holds this pool open (a dead or closed shard no longer updates `generation`)."""
        try:
            os.stat(self.handle.path)
        except OSError:
            return False
        return True

    @classmethod
    def create(cls, specs: PartSpecs, num_blocks: int, *, label: str, epoch: str) -> "SharedBlockPool":
        """Allocate (and fault in) a new pool owned by this process."""
        _, nbytes = _layout(dict(specs), num_blocks)
        fd = os.memfd_create(f"blatam-kv-{label}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, nbytes)
            os.posix_fallocate(fd, 0, nbytes)  # reserve the pages now: a full /dev/shm fails here, not mid-request
            mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(fd)
            raise
        handle = PoolHandle(
            pid=os.getpid(), fd=fd, nbytes=nbytes, num_blocks=num_blocks, epoch=epoch,
            parts=tuple((name, tuple(shape), str(dtype).removeprefix("torch.")) for name, (shape, dtype) in specs.items()),
        )
        return cls(specs, num_blocks, mapping, fd=fd, handle=handle)

    @classmethod
    def attach(cls, handle: PoolHandle) -> "SharedBlockPool":
        """Map another process's pool on this node.

        Raises:
            OSError: the owner is gone or the pool is not reachable from here.
            ValueError: the mapping does not have the size the handle states.
        """
        fd = os.open(handle.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size != handle.nbytes:
                raise ValueError(f"shared pool {handle.path} has {size} bytes, expected {handle.nbytes}")
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)  # the mapping keeps the memory alive
        return cls(handle.specs(), handle.num_blocks, mapping, fd=None, handle=handle)

    def close(self) -> None:
        """Give up the owner's descriptor (mappings stay valid until dropped)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
