"""Business Agents' requests: the catalogue and tenants' agents, checking and storing runs, and reading them back.

`AgentsService` is what the Serve app calls. A run is checked completely
before anything is stored (agent, capability, inputs against the
capability's input schema, parameters against the service's limits), stored
with a snapshot of the agent's definition, and handed to the
`runner.RunRunner`, which the service owns. Runs, steps and tenant agents
are read back per owner: another tenant's ids are "not found".
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from business_modules.agents import agent_store
from business_modules.agents import constants as C
from business_modules.agents import repository as repo
from business_modules.agents.calls import ToolCaller
from business_modules.agents.catalogue import builtin, catalogue
from business_modules.agents.config import AgentsSettings
from business_modules.agents.definitions import ID_PATTERN, AgentDefinition, CapabilityDefinition
from business_modules.agents.errors import (
    AgentExistsError,
    AgentLimitError,
    AgentNotFoundError,
    BuiltinAgentError,
    CapabilityNotFoundError,
    InputTooLargeError,
    InvalidInputsError,
    NotAwaitingApprovalError,
    RunFinishedError,
    RunNotFoundError,
)
from business_modules.agents.models import ExecuteRequest, RejectRequest, Run, RunStatus, Step
from business_modules.agents.ports import Services
from business_modules.agents.runner import RunRunner
from business_modules.agents.schemas import validation_errors
from business_modules.llm_client import LLMClient
from business_modules.storage import Database


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """An agent as a caller sees it: its definition and whether it is the catalogue's or the tenant's."""

    definition: AgentDefinition
    builtin: bool


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A change of a run: ``step`` (a step was stored or changed), ``status`` (the run's state changed),
    ``end`` (the run finished), or ``ping`` (nothing changed for a while: a stream stays open through proxies
    that end silent ones, e.g. while a run waits for an approval)."""

    kind: str
    run: Run
    step: Step | None = None


class AgentsService:
    """Business Agents of one replica over a shared database, an `LLMClient` and the other services' ports."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: AgentsSettings | None = None,
                 services: Services | None = None, runner_id: str | None = None,
                 clock: Callable[[], float] = time.time, caller: ToolCaller | None = None) -> None:
        self.db = db
        self.settings = settings or AgentsSettings()
        self.runner_id = runner_id or uuid.uuid4().hex
        self._clock = clock
        self.runner = RunRunner(db=db, llm=llm, settings=self.settings, services=services or Services(),
                                runner_id=self.runner_id, clock=clock, caller=caller)

    async def start(self) -> None:
        """Resume the runs stopped replicas left, then keep this replica's leases alive."""
        await self.runner.start()

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop this replica's runs; they resume on the next replica from their last stored step."""
        await self.runner.close(grace_s=grace_s)

    # -- agents ----------------------------------------------------------------------------
    async def agents(self, *, owner: str | None) -> list[AgentEntry]:
        """The catalogue's agents, then the tenant's own."""
        own = await agent_store.agents_of(self.db, owner)
        return ([AgentEntry(a, True) for a in catalogue().values()] + [AgentEntry(a, False) for a in own])

    async def agent(self, agent_id: str, *, owner: str | None) -> AgentEntry:
        found = builtin(agent_id)
        if found is not None:
            return AgentEntry(found, True)
        _check_agent_id(agent_id)
        own = await agent_store.get_agent(self.db, owner, agent_id)
        if own is None:
            raise AgentNotFoundError(f"no agent {agent_id[:64]!r}")
        return AgentEntry(own, False)

    async def create_agent(self, definition: AgentDefinition, *, owner: str | None) -> AgentEntry:
        """Store a tenant's agent (already validated as an `AgentDefinition`)."""
        if builtin(definition.id) is not None:
            raise AgentExistsError(f"{definition.id!r} is a catalogue agent; choose another id")
        if await agent_store.count_agents(self.db, owner) >= self.settings.max_agents_per_tenant:
            raise AgentLimitError(f"this tenant already has {self.settings.max_agents_per_tenant} agents; delete one "
                                  "first")
        if not await agent_store.insert_agent(self.db, owner, definition, now=self._clock()):
            raise AgentExistsError(f"this tenant already has an agent {definition.id!r}")
        return AgentEntry(definition, False)

    async def delete_agent(self, agent_id: str, *, owner: str | None) -> None:
        """Delete a tenant's agent (its runs keep the definition they started with)."""
        if builtin(agent_id) is not None:
            raise BuiltinAgentError(f"{agent_id!r} is a catalogue agent and cannot be deleted")
        _check_agent_id(agent_id)
        if not await agent_store.delete_agent(self.db, owner, agent_id):
            raise AgentNotFoundError(f"no agent {agent_id[:64]!r}")

    # -- runs --------------------------------------------------------------------------------
    async def prepare(self, agent_id: str, capability: str, request: ExecuteRequest, *,
                      owner: str | None) -> tuple[AgentDefinition, CapabilityDefinition]:
        """Check an execution completely before anything is stored."""
        agent = (await self.agent(agent_id, owner=owner)).definition
        found = agent.capability(capability)
        if found is None:
            names = ", ".join(c.name for c in agent.capabilities)
            raise CapabilityNotFoundError(f"agent {agent.id} has no capability {capability[:64]!r}; it has: {names}")
        try:
            size = len(json.dumps(request.inputs, ensure_ascii=False, allow_nan=False))
        except ValueError:
            raise InvalidInputsError("inputs must be plain JSON: NaN and Infinity are not numbers there") from None
        if size > C.MAX_INPUTS_CHARS:
            raise InputTooLargeError(f"inputs too large: {size} characters as JSON; at most {C.MAX_INPUTS_CHARS}")
        errors = validation_errors(found.input_schema, request.inputs)
        if errors:
            raise InvalidInputsError(f"inputs do not fit the input schema of {agent.id}/{found.name}: "
                                     + "; ".join(f"inputs.{e}" if not e.startswith("(root)") else e for e in errors))
        self._check_parameters(request)
        return agent, found

    def _check_parameters(self, request: ExecuteRequest) -> None:
        p, s = request.parameters, self.settings
        limits = [("max_steps", p.max_steps, s.max_steps_limit), ("max_tokens", p.max_tokens, s.token_budget_limit),
                  ("wait_s", p.wait_s, s.max_wait_s)]
        for name, value, limit in limits:
            if value is not None and value > limit:
                raise InvalidInputsError(f"parameters.{name}: at most {limit:g}, got {value:g}")

    async def submit(self, agent_id: str, capability: str, request: ExecuteRequest, *, owner: str | None,
                     scopes: Sequence[str] | None = None) -> Run:
        """Store a queued run, then run it in the background. ``scopes``: the caller's gateway scopes, which
        bound the tools the run may use (None: a direct call)."""
        agent, found = await self.prepare(agent_id, capability, request, owner=owner)
        self.runner.check_capacity(owner)
        now = self._clock()
        run = Run(id=uuid.uuid4().hex, owner=owner, agent_id=agent.id, capability=found.name,
                  agent=agent.model_dump(), inputs=request.inputs,
                  parameters=request.parameters.model_dump(exclude={"wait_s"}), dry_run=request.dry_run,
                  status=RunStatus.QUEUED, scopes=None if scopes is None else tuple(scopes), created_at=now,
                  updated_at=now, runner_id=self.runner_id,
                  lease_until=self.runner.lease_until())
        await repo.insert_run(self.db, run)
        self.runner.launch(run.id, owner)
        return run

    async def execute(self, agent_id: str, capability: str, request: ExecuteRequest, *, owner: str | None,
                      scopes: Sequence[str] | None = None) -> Run:
        """Submit, then wait up to ``parameters.wait_s`` for the run to finish or to wait for an approval."""
        run = await self.submit(agent_id, capability, request, owner=owner, scopes=scopes)
        wait_s = request.parameters.wait_s
        return await self.wait(run.id, owner=owner,
                               timeout_s=self.settings.default_wait_s if wait_s is None else wait_s)

    async def wait(self, run_id: str, *, owner: str | None, timeout_s: float, poll_s: float = 0.1) -> Run:
        """The run once it finished or waits for an approval, or as it stands after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = await self.get(run_id, owner=owner)
            if run.status.finished or run.status is RunStatus.AWAITING_APPROVAL or time.monotonic() >= deadline:
                return run
            await asyncio.sleep(poll_s)

    async def get(self, run_id: str, *, owner: str | None) -> Run:
        """The run as stored; an orphaned one (its lease past) is adopted and resumes here."""
        run = await repo.get_run(self.db, run_id)
        if run is None or run.owner != owner:
            raise RunNotFoundError(f"no agent run {run_id[:64]}")
        if run.status in (RunStatus.QUEUED, RunStatus.RUNNING) and run.lease_until is not None \
                and run.lease_until < self._clock():
            await self.runner.adopt_stale()
            run = await repo.get_run(self.db, run_id) or run
        return run

    async def steps(self, run_id: str, *, owner: str | None) -> tuple[Run, list[Step]]:
        run = await self.get(run_id, owner=owner)
        return run, await repo.steps_of(self.db, run_id)

    async def runs(self, *, owner: str | None, limit: int = 50, offset: int = 0) -> list[Run]:
        return await repo.runs_of(self.db, owner, limit=limit, offset=offset)

    async def cancel(self, run_id: str, *, owner: str | None) -> Run:
        run = await self.get(run_id, owner=owner)
        if run.status.finished or not await repo.cancel(self.db, run_id, now=self._clock()):
            run = await self.get(run_id, owner=owner)
            raise RunFinishedError(f"run {run_id} is already {run.status.value}")
        self.runner.stop(run_id)
        return await self.get(run_id, owner=owner)

    async def approve(self, run_id: str, *, owner: str | None) -> Run:
        """Let the waiting tool call happen; the run resumes on this replica."""
        return await self._decide(run_id, owner=owner, approved=True, reason=None)

    async def reject(self, run_id: str, body: RejectRequest, *, owner: str | None) -> Run:
        """Refuse the waiting tool call; the model is told (with the reason) and the run goes on."""
        return await self._decide(run_id, owner=owner, approved=False, reason=body.reason)

    async def _decide(self, run_id: str, *, owner: str | None, approved: bool, reason: str | None) -> Run:
        run = await self.get(run_id, owner=owner)
        if run.status is not RunStatus.AWAITING_APPROVAL or not await repo.decide(
                self.db, run_id, approved=approved, reason=reason, runner_id=self.runner_id, now=self._clock(),
                lease_until=self.runner.lease_until()):
            run = await self.get(run_id, owner=owner)
            raise NotAwaitingApprovalError(f"run {run_id} is {run.status.value}, not awaiting an approval")
        self.runner.launch(run_id, owner)
        return await self.get(run_id, owner=owner)

    async def events(self, run_id: str, *, owner: str | None, poll_s: float = 0.2, ping_s: float = 15.0,
                     timeout_s: float = 900.0) -> AsyncIterator[RunEvent]:
        """Each step as it is stored or changes, each change of the run's state, and ``end`` when it finishes."""
        seen: dict[int, tuple[object, ...]] = {}
        status: RunStatus | None = None
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while True:
            run, steps = await self.steps(run_id, owner=owner)
            for step in steps:
                key = (step.status, step.attempts, step.updated_at)
                if seen.get(step.index) != key:
                    seen[step.index] = key
                    last = time.monotonic()
                    yield RunEvent("step", run, step)
            if run.status.finished:
                yield RunEvent("end", run)
                return
            if run.status is not status:
                status, last = run.status, time.monotonic()
                yield RunEvent("status", run)
            if time.monotonic() - last >= ping_s:
                last = time.monotonic()
                yield RunEvent("ping", run)
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(poll_s)


def _check_agent_id(agent_id: str) -> None:
    """No agent has an id outside `ID_PATTERN`: such an id is not looked up (PostgreSQL refuses a NUL in text, which
    answered 503 ``storage_error`` to ``GET /agents/%00``)."""
    if re.fullmatch(ID_PATTERN, agent_id) is None:
        raise AgentNotFoundError(f"no agent {agent_id[:64]!r}")
