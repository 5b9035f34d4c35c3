"""The benchmarks' wait for quiet CPUs, on this machine's real /proc/stat and a real busy process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from scripts.bench.quiet_cpu import CpuTimes, idle_fraction, read_cpu_times, wait_for_quiet_cpus

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")


def test_idle_fraction_is_the_idle_share_of_the_time_between_two_readings() -> None:
    assert idle_fraction(CpuTimes(idle=100, total=200), CpuTimes(idle=175, total=300)) == 0.75
    assert idle_fraction(CpuTimes(idle=5, total=10), CpuTimes(idle=5, total=10)) == 1.0
    assert read_cpu_times("/nonexistent") is None


def test_it_waits_while_every_core_is_busy_and_gives_up_at_its_bound() -> None:
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        waited = asyncio.run(wait_for_quiet_cpus(max_wait_s=1.0))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert 1.0 <= waited < 3.0  # never quiet: it waited its whole bound, then let the measure run
    # A bound of 0 (`blatam bench peers --quiet-wait-s 0`) never waits, nor reads the CPUs.
    assert asyncio.run(wait_for_quiet_cpus(max_wait_s=0)) == 0.0


def test_a_quiet_machine_is_waited_for_one_window_at_most() -> None:
    time.sleep(0.5)  # whatever ran before settles
    waited = asyncio.run(wait_for_quiet_cpus(threshold=0.0, window_s=0.05))
    assert waited < 0.5
