"""Open-loop load at a fixed rate with bounded concurrency, for soaks and benchmarks over HTTP.

Why open loop: a closed-loop client waits for each answer before sending the
next, so a slow server is asked less and its tail latency hides ("coordinated
omission"). Here request ``i`` is due at ``start + i / rate`` whatever the
answers do, and its latency is measured from when it was *due*, so any wait
(for the server, or for a free slot) counts.

Why bounded: at most ``max_in_flight`` requests run at once, so a server that
stops answering cannot make the generator's own memory and sockets grow. When
every slot is busy the next request starts late; the lateness is in its
latency and in `LoadSummary.max_start_lag_s`, never dropped silently.

Each request is a coroutine given the shared `httpx.AsyncClient`; it checks
the answer itself and raises on anything wrong, which counts as an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

Request = Callable[[httpx.AsyncClient, int], Awaitable[None]]
"""One request: ``(client, sequence number)``; raises when the answer is wrong (status, body, stream)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of request in the mix, sent ``weight`` times per cycle of the mix."""

    name: str
    weight: int
    send: Request


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request. Times are seconds since the run started."""

    kind: str
    seq: int
    due_s: float
    started_s: float
    done_s: float
    error: str | None = None

    @property
    def latency_s(self) -> float:
        """From when it was due to its end: includes any wait for a slot (no coordinated omission)."""
        return self.done_s - self.due_s


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What the generator itself saw: how many it sent and how far it fell behind its schedule."""

    sent: int
    max_start_lag_s: float
    wall_s: float


def schedule(kinds: Sequence[Kind]) -> list[Kind]:
    """One cycle of the mix, interleaved (``a b a c a b ...``), so each kind spreads over the run.

    Deterministic (no random choice), so two runs send the same sequence.
    """
    if not kinds or any(k.weight < 1 for k in kinds):
        raise ValueError("every kind needs a weight >= 1")
    cycle: list[Kind] = []
    credit = {k.name: 0.0 for k in kinds}
    total = sum(k.weight for k in kinds)
    for _ in range(total):  # smooth weighted round robin
        for k in kinds:
            credit[k.name] += k.weight
        best = max(kinds, key=lambda k: credit[k.name])
        credit[best.name] -= total
        cycle.append(best)
    return cycle


async def run_open_loop(
    client: httpx.AsyncClient,
    kinds: Sequence[Kind],
    *,
    rate_per_s: float,
    duration_s: float,
    max_in_flight: int,
    on_outcome: Callable[[Outcome], None],
    clock: Callable[[], float] = time.perf_counter,
) -> LoadSummary:
    """Send the mix at ``rate_per_s`` for ``duration_s``, then wait for every request still running.

    ``on_outcome`` is called in the event loop for each finished request
    (keep it cheap: it is how the caller aggregates without this module
    keeping every outcome).
    """
    if rate_per_s <= 0 or duration_s <= 0 or max_in_flight < 1:
        raise ValueError("rate_per_s and duration_s must be > 0 and max_in_flight >= 1")
    cycle = schedule(kinds)
    slots = asyncio.Semaphore(max_in_flight)
    running: set[asyncio.Task[None]] = set()
    start = clock()
    max_lag = 0.0

    async def one(kind: Kind, seq: int, due_s: float) -> None:
        started = clock() - start
        error = None
        try:
            await kind.send(client, seq)
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome, never a crash of the generator
            error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            slots.release()
        on_outcome(Outcome(kind.name, seq, due_s, started, clock() - start, error))

    seq = 0
    while (due := seq / rate_per_s) < duration_s:
        delay = due - (clock() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        max_lag = max(max_lag, clock() - start - due)
        task = asyncio.create_task(one(cycle[seq % len(cycle)], seq, due))
        running.add(task)
        task.add_done_callback(running.discard)
        seq += 1
    if running:
        await asyncio.gather(*running)
    return LoadSummary(sent=seq, max_start_lag_s=max_lag, wall_s=clock() - start)
