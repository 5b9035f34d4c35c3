"""Wait until the machine's CPUs are quiet before a timed measure (Linux ``/proc/stat``).

Why: two servers measured in turns share the cores, and a server may keep
them busy after its own measure ends. vLLM-CPU's engine spins a whole core
for about a second after a burst of requests (measured here: 9-11 of 10 ticks
per 100 ms for 1.0 s after 16 concurrent completions, then 0), so whichever
server was measured right after it lost a core for half of a 2-second
measure. Waiting for a quiet window before each measure gives both servers
the same machine. Where ``/proc/stat`` cannot be read it does not wait.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

QUIET_IDLE_FRACTION = 0.85
"""A window counts as quiet when the CPUs were idle at least this fraction of it."""
WINDOW_S = 0.1
MAX_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class CpuTimes:
    idle: int
    total: int


def read_cpu_times(path: str = "/proc/stat") -> CpuTimes | None:
    """All CPUs' idle (idle + iowait) and total jiffies, or None where the file is not there."""
    try:
        with open(path, encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    return CpuTimes(idle=values[3] + (values[4] if len(values) > 4 else 0), total=sum(values))


def idle_fraction(before: CpuTimes, after: CpuTimes) -> float:
    """Idle share of the CPUs' time between two readings (1.0 when no time passed)."""
    total = after.total - before.total
    return 1.0 if total <= 0 else (after.idle - before.idle) / total


async def wait_for_quiet_cpus(*, threshold: float = QUIET_IDLE_FRACTION, window_s: float = WINDOW_S,
                              max_wait_s: float = MAX_WAIT_S) -> float:
    """Wait until one window of ``window_s`` is idle ``threshold`` or more (at most ``max_wait_s``; 0: never);
    seconds waited."""
    if max_wait_s <= 0:
        return 0.0
    started = time.monotonic()
    before = read_cpu_times()
    if before is None:
        return 0.0
    while time.monotonic() - started < max_wait_s:
        await asyncio.sleep(window_s)
        after = read_cpu_times()
        if after is None or idle_fraction(before, after) >= threshold:
            break
        before = after
    return time.monotonic() - started
