"""Where runs execute: this replica's run tasks, per-tenant slots, leases, heartbeat and adoption of orphans.

It exists apart from `business_modules.agents.service` so that checking and
storing a request (the service) and running it (here, with `loop.RunLoop`)
can each be read alone; the service owns one `RunRunner`.

A run belongs to the replica that runs it (``runner_id``) and carries a
lease that replica renews while its task is alive. Unlike a BUL or Export
job, a run whose replica is gone is not failed: once its lease is past, any
replica adopts it (at start, on its heartbeat, or when someone asks for the
run) and the loop resumes it from its last stored step. A replica that stops
cleanly ends the leases of its running runs at once, so the next replica
resumes them without waiting. Each attempt has its own id, and every write
of the loop checks it, so two replicas never advance one run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from business_modules.agents import repository as repo
from business_modules.agents.calls import ToolCaller
from business_modules.agents.config import AgentsSettings
from business_modules.agents.errors import AgentsBusyError
from business_modules.agents.loop import RunLoop, RunLost
from business_modules.agents.models import RunStatus
from business_modules.agents.ports import Services
from business_modules.llm_client import LLMClient
from business_modules.storage import Database, StorageError
from business_modules.storage.heartbeat import run_heartbeat
from business_modules.storage.tenant_tasks import TenantTasks

logger = logging.getLogger(__name__)

ADOPT_PER_BEAT = 16
"""Orphaned runs one replica adopts per heartbeat (the rest wait for the next beat or another replica)."""


class RunRunner:
    """Runs this replica's agent runs in the background and keeps their leases alive."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: AgentsSettings, services: Services, runner_id: str,
                 clock: Callable[[], float], caller: ToolCaller | None = None) -> None:
        self.db = db
        self.settings = settings
        self.runner_id = runner_id
        self._clock = clock
        self.loop = RunLoop(db=db, llm=llm, settings=settings, services=services, clock=clock, caller=caller)
        self._jobs = TenantTasks(max_running_per_tenant=settings.max_running_per_tenant, name="agent-run")
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._adopting = asyncio.Lock()

    async def start(self) -> None:
        """Adopt the runs dead or stopped replicas left, then keep leases alive and adopt more on each beat."""
        await self.adopt_stale()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="agents-heartbeat")

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat and this replica's run tasks; their leases end now, so another replica (or this
        one's successor) resumes them from their last stored step."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait({self._heartbeat}, timeout=grace_s)
        await self._jobs.stop_all(grace_s=grace_s)

    @property
    def running(self) -> list[str]:
        return self._jobs.keys()

    def lease_until(self) -> float:
        return self._clock() + self.settings.run_lease_s

    def check_capacity(self, owner: str | None) -> None:
        """Raise `AgentsBusyError` when the tenant already has its most unfinished runs here."""
        pending = self._jobs.unfinished(owner)
        if pending >= self.settings.max_pending_per_tenant:
            raise AgentsBusyError(f"this tenant already has {pending} unfinished runs here; retry in a few seconds")

    def launch(self, run_id: str, owner: str | None) -> None:
        """Run a stored run (queued on this replica) once one of its tenant's slots is free."""
        if run_id in self._jobs or self._stopping.is_set():
            return
        self._jobs.launch(run_id, owner, lambda: self._run(run_id))

    def stop(self, run_id: str) -> None:
        """Cancel the run's task in this replica, if it has one (a cancelled run's LLM call is closed with it)."""
        self._jobs.stop(run_id)

    async def adopt_stale(self) -> int:
        """Take over unfinished runs whose lease is past and resume them here; how many were adopted."""
        if self._stopping.is_set():
            return 0
        async with self._adopting:
            now = self._clock()
            adopted = 0
            for run_id in await repo.stale_runs(self.db, now=now, limit=ADOPT_PER_BEAT):
                run = await repo.get_run(self.db, run_id)
                if run is None or not await repo.adopt(self.db, run_id, runner_id=self.runner_id, now=now,
                                                       lease_until=self.lease_until()):
                    continue
                logger.warning("adopted agent run %s (its replica stopped renewing it); resuming it", run_id)
                self.launch(run_id, run.owner)
                adopted += 1
            return adopted

    async def _run(self, run_id: str) -> None:
        attempt = uuid.uuid4().hex
        try:
            if not await repo.claim(self.db, run_id, runner_id=self.runner_id, attempt_id=attempt,
                                    now=self._clock(), lease_until=self.lease_until()):
                logger.info("agent run %s was no longer queued here when its slot came up", run_id)
                return
            run = await repo.get_run(self.db, run_id)
            assert run is not None and run.status is RunStatus.RUNNING
            await self.loop.drive(run, attempt)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(run_id, attempt))
            raise
        except RunLost:
            logger.info("agent run %s was cancelled or taken over while it ran", run_id)
        except StorageError as exc:
            # Not failed: its lease runs out (this task no longer renews it) and a replica resumes it.
            logger.error("agent run %s: database error; it resumes once its lease runs out: %s", run_id, exc)
        except Exception as exc:  # noqa: BLE001 - recorded on the run and logged, never silent
            logger.exception("agent run %s failed unexpectedly", run_id)
            await self._fail(run_id, attempt, f"internal error: {type(exc).__name__}")

    async def _release(self, run_id: str, attempt: str) -> None:
        try:
            await repo.release(self.db, run_id, attempt_id=attempt, now=self._clock())
        except StorageError as exc:
            logger.error("agent run %s: could not end its lease on shutdown (%s); it resumes once it runs out",
                         run_id, exc)

    async def _fail(self, run_id: str, attempt: str, error: str) -> None:
        try:
            await repo.finish(self.db, run_id, attempt_id=attempt, status=RunStatus.FAILED, now=self._clock(),
                              error=error)
        except StorageError as exc:
            logger.error("agent run %s: could not record its failure (%s): %s", run_id, error, exc)

    async def _heartbeat_loop(self) -> None:
        await run_heartbeat(self._beat, every_s=self.settings.run_heartbeat_s, stopping=self._stopping,
                            name="agents")

    async def _beat(self, _beats: int) -> None:
        await repo.renew_leases(self.db, runner_id=self.runner_id, run_ids=self.running,
                                lease_until=self.lease_until())
        await self.adopt_stale()
