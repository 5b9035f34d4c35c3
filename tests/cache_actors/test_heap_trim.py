"""The batcher gives the heap's free pages back when it goes idle after work (cache_actors/engine/heap_trim.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from cache_actors.engine.heap_trim import HeapTrimmer, libc_malloc_trim


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_only_after_work_and_at_most_once_per_interval() -> None:
    calls: list[float] = []
    clock = _Clock()
    trimmer = HeapTrimmer(10.0, lambda: calls.append(clock.now) or 1, clock=clock)
    assert not trimmer.maybe_trim()  # idle from the start: nothing was freed
    trimmer.note_work()
    assert trimmer.maybe_trim() and calls == [100.0]
    assert not trimmer.maybe_trim()  # no work since
    trimmer.note_work()
    clock.now += 9.5
    assert not trimmer.maybe_trim()  # too soon: the work stays noted
    clock.now += 1.0
    assert trimmer.maybe_trim() and calls == [100.0, 110.5] and trimmer.trims == 2


def test_off_when_the_interval_is_zero_or_there_is_no_malloc_trim_and_a_failing_trim_stops_trying() -> None:
    for trimmer in (HeapTrimmer(0.0, lambda: 1), HeapTrimmer(10.0, None)):
        trimmer.note_work()
        assert not trimmer.maybe_trim() and trimmer.trims == 0

    def broken() -> int:
        raise OSError("no")

    trimmer = HeapTrimmer(0.001, broken)
    trimmer.note_work()
    assert not trimmer.maybe_trim()
    time.sleep(0.01)
    trimmer.note_work()
    assert not trimmer.maybe_trim() and trimmer.trims == 0


@pytest.mark.skipif(libc_malloc_trim() is None, reason="no glibc malloc_trim here")
def test_glibcs_malloc_trim_gives_freed_heap_memory_back() -> None:
    """What the trimmer relies on, in a process of its own: 256 MiB of 64-KiB heap blocks freed but for the last
    (which pins the heap's top, as live data does in a replica) stay in RSS until ``malloc_trim``."""
    script = textwrap.dedent("""
        import ctypes
        from cache_actors.engine.heap_trim import libc_malloc_trim
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        def rss_mib():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        blocks = [libc.malloc(64 * 1024) for _ in range(4096)]
        for b in blocks:
            ctypes.memset(b, 1, 64 * 1024)
        for b in blocks[:-1]:
            libc.free(b)
        before = rss_mib()
        libc_malloc_trim()()
        print(before, rss_mib())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(float, run.stdout.split())
    assert before - after > 200, (before, after)


def test_the_batcher_trims_once_idle_after_serving_and_not_when_told_not_to(batcher) -> None:
    import asyncio

    from cache_actors.engine.batching import SequenceRequest
    from cache_actors.engine.sampling import SamplingParams

    trimming, off = batcher(heap_trim_interval_s=0.001), batcher(heap_trim_interval_s=0)
    if trimming.heap._trim is None:
        pytest.skip("no glibc malloc_trim here")
    assert trimming.heap.trims == 0  # idle since it started: nothing to give back
    for b in (trimming, off):
        asyncio.run(b.generate(SequenceRequest(token_ids=list(range(5, 40)), sampling=SamplingParams(max_new_tokens=8))))
    deadline = time.monotonic() + 10
    while trimming.heap.trims == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trimming.heap.trims >= 1 and off.heap.trims == 0
