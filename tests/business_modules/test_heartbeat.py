"""The leased-job services' heartbeat: beats in order, outlives a failing beat, stops when told."""

from __future__ import annotations

import asyncio

from business_modules.storage.heartbeat import run_heartbeat


async def test_beats_count_up_survive_a_failure_and_stop_when_told(caplog) -> None:
    stopping = asyncio.Event()
    seen: list[int] = []

    async def beat(n: int) -> None:
        seen.append(n)
        if n == 2:
            raise ConnectionError("database hiccup")
        if n == 4:
            stopping.set()

    await asyncio.wait_for(run_heartbeat(beat, every_s=0.01, stopping=stopping, name="test"), timeout=5)
    assert seen == [1, 2, 3, 4]
    assert "test heartbeat failed" in caplog.text


async def test_a_stop_during_the_wait_returns_without_another_beat() -> None:
    stopping = asyncio.Event()
    seen: list[int] = []

    async def beat(n: int) -> None:
        seen.append(n)

    task = asyncio.create_task(run_heartbeat(beat, every_s=30, stopping=stopping, name="test"))
    await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(task, timeout=1)
    assert seen == []
