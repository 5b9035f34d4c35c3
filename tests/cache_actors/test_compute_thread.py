"""The engine's one torch thread: calls run there in order, the batcher's loop serves them between steps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cache_actors.engine.batching import SequenceRequest
from cache_actors.engine.compute_thread import ComputeThread
from cache_actors.engine.sampling import SamplingParams


def test_calls_run_on_the_thread_in_order_and_raise_there():
    compute = ComputeThread("test-compute")
    seen: list[str] = []
    assert compute.call(lambda: threading.current_thread().name) == "test-compute"
    futures = [compute.submit(lambda i=i: seen.append(str(i))) for i in range(5)]
    for future in futures:
        future.result(timeout=5)
    assert seen == ["0", "1", "2", "3", "4"]
    with pytest.raises(ZeroDivisionError):
        compute.call(lambda: 1 / 0)
    assert compute.call(lambda: compute.call(lambda: 7)) == 7  # a call from the thread itself runs inline
    compute.close()
    with pytest.raises(RuntimeError, match="closed"):
        compute.call(lambda: None)


def test_engine_work_and_the_batcher_share_one_thread(make_engine, tiny_runner):
    """Steps, persist-style calls from other threads and the model's ops all run on the compute thread."""
    engine = make_engine()
    batcher = engine.batcher
    where: set[str] = set()
    original = batcher._step

    def step() -> None:
        where.add(threading.current_thread().name)
        original()

    batcher._step = step
    request = SequenceRequest(token_ids=tiny_runner.encode("Hello there"), sampling=SamplingParams(max_new_tokens=8))

    async def run():
        return await asyncio.gather(*(batcher.generate(request) for _ in range(3)))

    results = asyncio.run(run())
    assert all(r["completion_tokens"] == 8 for r in results)
    calls = {engine.compute.call(lambda: threading.current_thread().name) for _ in range(3)}  # served mid-loop
    engine.clear_cache()
    assert where == calls == {"torch-compute"}
    assert batcher.alive
    engine.close()
    assert not batcher.alive


def test_two_batchers_on_one_engine_both_run(make_engine, tiny_runner):
    """The second loop cannot share the engine's thread (it would run inside the first): it gets its own."""
    from cache_actors.engine.batching import BatcherConfig, ContinuousBatcher

    engine = make_engine()
    first = ContinuousBatcher(engine, BatcherConfig(max_batch_size=2, max_model_len=256))
    second = ContinuousBatcher(engine, BatcherConfig(max_batch_size=2, max_model_len=256, max_prefill_tokens=32))
    assert first.compute is engine.compute and second.compute is not engine.compute
    request = SequenceRequest(token_ids=tiny_runner.encode("Hello there"), sampling=SamplingParams(max_new_tokens=6))

    async def run():
        return await asyncio.wait_for(asyncio.gather(first.generate(request), second.generate(request)), 60)

    one, two = asyncio.run(run())
    assert one["token_ids"] == two["token_ids"] and len(one["token_ids"]) == 6
    second.close()
    first.close()
    assert not engine.compute.has_loop  # the first loop ended with close()
    release = threading.Event()
    held = engine.compute.start_loop(lambda: release.wait(5), wake=lambda: None)
    with pytest.raises(RuntimeError, match="already runs"):
        engine.compute.start_loop(lambda: None, wake=lambda: None)
    release.set()
    held.result(timeout=5)


_EXIT_WHILE_BUSY = """
import time, torch
from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner

engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=16, max_tokens=1024), runner=ModelRunner.load(None, demo_spec=TINY_SPEC))
engine.batcher  # its loop holds the compute thread, as in every served engine
x = torch.randn(256, 256)

def busy():
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        torch.mm(x, x)  # releases the GIL: the thread is in torch when the interpreter would finalize
    print("finished", flush=True)

engine.compute.submit(busy)
time.sleep(0.05)
"""


def test_an_engine_left_open_at_exit_is_closed_before_the_interpreter_finalizes():
    """A daemon compute thread caught in a torch op at finalization aborts the process (seen in CI)."""
    import subprocess
    import sys

    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _EXIT_WHILE_BUSY], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "finished"  # the exit waited for the queued work instead of cutting it
