"""A replica's background jobs, per tenant: at most so many running at once, so many accepted.

BUL tasks and agent runs both execute in the replica that accepted them,
one asyncio task each, behind a per-tenant semaphore so one tenant's burst
cannot take every slot; both refuse a tenant's new job once it has its most
unfinished ones here. It sits beside `heartbeat` as the other half of the
services' job machinery (leases in the database, tasks in the replica).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class TenantTasks:
    """This replica's job tasks by key, each run inside its tenant's slot."""

    def __init__(self, *, max_running_per_tenant: int, name: str) -> None:
        self._max_running = max_running_per_tenant
        self._name = name
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tenant_of: dict[str, str] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._tasks

    def keys(self) -> list[str]:
        return list(self._tasks)

    def unfinished(self, owner: str | None) -> int:
        """The tenant's jobs here, running or waiting for a slot."""
        tenant = owner or ""
        return sum(1 for t in self._tenant_of.values() if t == tenant)

    def launch(self, key: str, owner: str | None, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` once one of the tenant's slots is free; forgotten when it ends."""
        tenant = owner or ""
        self._tenant_of[key] = tenant

        async def in_slot() -> None:
            async with self._slot(tenant):
                await work()

        task = asyncio.create_task(in_slot(), name=f"{self._name}-{key}")
        self._tasks[key] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(key, None)
            self._tenant_of.pop(key, None)

        task.add_done_callback(done)

    def stop(self, key: str) -> None:
        """Cancel the job's task in this replica, if it has one."""
        task = self._tasks.get(key)
        if task is not None:
            task.cancel()

    async def stop_all(self, *, grace_s: float) -> None:
        """Cancel every task and wait up to ``grace_s`` for them to record how they stopped."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                logger.warning("%d %s task(s) did not stop within %g s", len(pending), self._name, grace_s)

    def _slot(self, tenant: str) -> asyncio.Semaphore:
        slot = self._slots.get(tenant)
        if slot is None:
            slot = self._slots[tenant] = asyncio.Semaphore(self._max_running)
        return slot
