"""Give the native heap's free pages back to the OS when the engine goes idle.

glibc keeps memory that was freed: the heap's high-water mark stays in the
process's RSS, set by the largest step the replica ran, not by what it holds.
Measured on this machine (demo model, one process): after bursts of 4 to 16
prompts of 100 to 1,500 tokens, ``malloc_trim(0)`` gave back 30-60 MiB each
time, in 1-2.3 ms; in the soak through the gateway, called from gdb after a
backlog, 56 MiB. (The soak's lasting growth was oneDNN's per-shape caches,
which hold their memory: `cache_actors.engine.onednn_caches` bounds them.)

So the batcher calls `HeapTrimmer.maybe_trim` each time it runs out of work:
at most once per ``min_interval_s``, and only when it worked since the last
trim, it calls ``malloc_trim(0)``. RSS then tracks what is held: a burst's
memory goes back once it is served, and a leak check sees leaks, not peaks.
Off on a C library without ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL_S = 10.0


def libc_malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` (returns 1 when memory went back to the OS), or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """Calls ``trim`` (`libc_malloc_trim`; None: never) when the engine goes idle after work, at most once per
    ``min_interval_s`` (0: never)."""

    def __init__(self, min_interval_s: float, trim: Callable[[], int] | None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.min_interval_s = min_interval_s
        self._trim = trim
        self._clock = clock
        self._last_s = float("-inf")
        self._worked = False
        self.trims = 0

    def note_work(self) -> None:
        """The engine ran a step: there may be freed memory to give back."""
        self._worked = True

    def maybe_trim(self) -> bool:
        """Trim now if there was work since the last trim and the interval has passed; whether it trimmed."""
        if self._trim is None or self.min_interval_s <= 0 or not self._worked:
            return False
        now = self._clock()
        if now - self._last_s < self.min_interval_s:
            return False
        self._last_s = now
        self._worked = False
        try:
            self._trim()
        except Exception:  # noqa: BLE001 - an optimisation: never the loop's failure
            logger.exception("malloc_trim failed; not trimming again")
            self._trim = None
            return False
        self.trims += 1
        return True
