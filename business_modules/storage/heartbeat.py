"""The heartbeat of a leased-job service: one beat every interval until it is told to stop.

Export, BUL and Gamma keep their unfinished jobs' leases alive and fail the
jobs of replicas that stopped renewing theirs; each beat does that work. A
beat that fails (a database hiccup) is logged and the next one tries again:
the heartbeat must outlive the failure, or every job of this replica would
be failed as stale once its lease ran out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def run_heartbeat(beat: Callable[[int], Awaitable[None]], *, every_s: float, stopping: asyncio.Event,
                        name: str) -> None:
    """Await ``beat(n)`` (n = 1, 2, ...) every ``every_s`` seconds until ``stopping`` is set."""
    beats = 0
    while not stopping.is_set():
        try:
            async with asyncio.timeout(every_s):
                await stopping.wait()
            return
        except TimeoutError:
            pass
        beats += 1
        try:
            await beat(beats)
        except Exception:  # noqa: BLE001 - the heartbeat must outlive a database hiccup; logged
            logger.exception("%s heartbeat failed; retrying in %g s", name, every_s)
