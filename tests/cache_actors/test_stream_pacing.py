"""`paced_events`: how a request's events leave the batcher (cache_actors/engine/batching/stream_pacing.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cache_actors.engine.batching.stream_pacing import merge_deltas, paced_events


def delta(i: int) -> dict[str, Any]:
    return {"type": "delta", "text": f"t{i} ", "token_ids": [i], "logprobs": [{"token_id": i}]}


DONE = {"type": "done", "finish_reason": "length"}


async def _collect(queue: asyncio.Queue, interval_s: float) -> list[tuple[float, dict[str, Any]]]:
    started = time.perf_counter()
    return [(time.perf_counter() - started, event) async for event in paced_events(queue, interval_s)]


async def _produce(queue: asyncio.Queue, count: int, every_s: float, last: dict[str, Any] = DONE) -> None:
    for i in range(count):
        queue.put_nowait(delta(i))
        await asyncio.sleep(every_s)
    queue.put_nowait(last)


def _tokens(events: list[tuple[float, dict[str, Any]]]) -> list[int]:
    return [t for _, e in events if e["type"] == "delta" for t in e["token_ids"]]


async def test_without_an_interval_queued_deltas_leave_as_one_and_a_lone_one_at_once() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(5):
        queue.put_nowait(delta(i))
    queue.put_nowait(DONE)
    events = await asyncio.wait_for(_collect(queue, 0.0), 5)
    assert [e["token_ids"] for _, e in events[:-1]] == [[0, 1, 2, 3, 4]] and events[-1][1] == DONE
    queue.put_nowait(delta(5))  # nothing behind it and no done yet: it still leaves
    lone = paced_events(queue, 0.0)
    assert (await asyncio.wait_for(anext(lone), 1))["token_ids"] == [5]
    await lone.aclose()


async def test_the_first_token_leaves_at_once_and_later_ones_gather_for_the_interval() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    producer = asyncio.create_task(_produce(queue, 30, 0.01))
    events = await asyncio.wait_for(_collect(queue, 0.1), 10)
    await producer
    deltas = [(t, e) for t, e in events if e["type"] == "delta"]
    assert deltas[0][1]["token_ids"] == [0] and deltas[0][0] < 0.05  # never held back for the interval
    assert _tokens(events) == list(range(30))  # every token once, in order
    assert len(deltas) < 15  # ~0.3 s of tokens in chunks of ~0.1 s, not one chunk per token
    gaps = [b[0] - a[0] for a, b in zip(deltas, deltas[1:-1])]
    assert all(gap >= 0.09 for gap in gaps), gaps  # the last delta may go early: it goes with done
    merged = next(e for _, e in deltas[1:] if len(e["token_ids"]) > 1)
    assert merged["text"] == "".join(f"t{i} " for i in merged["token_ids"])
    assert [p["token_id"] for p in merged["logprobs"]] == merged["token_ids"]


async def test_done_does_not_wait_out_the_interval() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(delta(0))
    events = paced_events(queue, 10.0)
    assert (await anext(events))["token_ids"] == [0]
    queue.put_nowait(delta(1))
    queue.put_nowait(DONE)
    started = time.perf_counter()
    rest = [e async for e in events]
    assert time.perf_counter() - started < 1.0
    assert [e["type"] for e in rest] == ["delta", "done"] and rest[0]["token_ids"] == [1]


async def test_an_error_follows_the_tokens_made_before_it() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    producer = asyncio.create_task(_produce(queue, 3, 0.0, last={"type": "error", "message": "boom"}))
    events = await asyncio.wait_for(_collect(queue, 1.0), 10)
    await producer
    assert _tokens(events) == [0, 1, 2] and events[-1][1] == {"type": "error", "message": "boom"}


async def test_a_stream_cancelled_while_it_gathers_ends_without_an_error() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(delta(0))
    events = paced_events(queue, 10.0)
    await anext(events)
    queue.put_nowait(delta(1))
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await events.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(events)


def test_merge_deltas_keeps_prompt_logprobs_and_joins_the_rest() -> None:
    first = {**delta(0), "prompt_logprobs": [{"p": 1}], "prompt_tokens": 3}
    merged = merge_deltas(merge_deltas(None, first), delta(1))
    assert merged["text"] == "t0 t1 " and merged["token_ids"] == [0, 1] and merged["prompt_logprobs"] == [{"p": 1}]
    assert [p["token_id"] for p in merged["logprobs"]] == [0, 1]
