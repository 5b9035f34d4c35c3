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
