"""Memory, file descriptors and shared memory of a process, read from ``/proc`` (Linux).

Why ``/proc`` and not psutil: it is not a dependency of the project, and the
shared-memory counts need ``/proc/PID/maps`` and the fd links anyway. A soak
samples these for every Ray actor to catch leaks that a functional test never
sees: RSS that keeps growing, sockets or files never closed, shared-memory
segments (``/dev/shm`` files, memfds such as the KV shard's pool) mapped
again and again without being unmapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_SHM_PREFIXES = ("/dev/shm/", "/memfd:")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one moment."""

    rss_bytes: int
    fds: int
    shm_fds: int
    """Descriptors open on a ``/dev/shm`` file or a memfd."""
    shm_maps: int
    """Mapped regions of ``/dev/shm`` files or memfds (one mmap may show as several regions)."""
    shm_objects: int
    """Distinct shared-memory objects mapped (by path and inode)."""
    shm_mapped_bytes: int


def _is_shm(path: str) -> bool:
    return path.startswith(_SHM_PREFIXES)


def sample_process(pid: int) -> ProcSample | None:
    """The process's counts now, or None when it is gone (or was replaced between two reads)."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/status", encoding="ascii", errors="replace") as status:
            rss_kb = next((int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0)
        fds = shm_fds = 0
        for fd in os.listdir(f"{base}/fd"):
            fds += 1
            try:
                shm_fds += _is_shm(os.readlink(f"{base}/fd/{fd}"))
            except FileNotFoundError:  # closed while we listed
                pass
        shm_maps = shm_bytes = 0
        objects: set[tuple[str, str]] = set()
        with open(f"{base}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and _is_shm(fields[5]):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    shm_maps += 1
                    shm_bytes += end - start
                    objects.add((fields[5].rstrip("\n"), fields[4]))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ProcSample(rss_bytes=rss_kb * 1024, fds=fds, shm_fds=shm_fds, shm_maps=shm_maps,
                      shm_objects=len(objects), shm_mapped_bytes=shm_bytes)


def dev_shm_entries() -> int:
    """Files in ``/dev/shm`` now (machine-wide: other programs' files count too)."""
    try:
        return len(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return 0
