"""The agent loop: one attempt at advancing a run, from its last stored step, until it ends or waits.

Each step is one LLM call with the run's whole history (`prompt`), offering
the capability's tools plus ``final_answer`` with ``tool_choice`` "required"
(or one named tool: the capability's first tool, or the final answer when
the budgets leave room for one call only: `budget`). The model answers with
a tool call; the call is read (`calls`), then:

- ``final_answer``: its arguments, valid against the output schema, are the
  run's result, stored with the run's completion;
- an unknown tool or invalid arguments: recorded as an invalid step, and the
  model is told in the next prompt;
- a tool with side effects: in a dry run, recorded as skipped; otherwise the
  run waits in ``awaiting_approval`` (a person approves or rejects it) and
  the call is made once, after the approval;
- any other tool: called (timeout, retries) and its outcome recorded.

Every step is stored before the next one starts, and a tool call's intent
before the call, so the loop can start again from whatever was stored: a
model call in flight is asked again (it changes nothing), an idempotent
tool call in flight is made again, and a call with side effects that may
have happened is never repeated: it is recorded as interrupted, and the
model is told its outcome is unknown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from business_modules.agents import constants as C
from business_modules.agents import repository as repo
from business_modules.agents.budget import (
    Budget,
    BudgetExhausted,
    first_prompt_estimate,
    next_prompt_estimate,
    plan_step,
)
from business_modules.agents.calls import InvalidCall, ToolCaller, read_call, read_final_answer
from business_modules.agents.config import AgentsSettings
from business_modules.agents.definitions import AgentDefinition, CapabilityDefinition
from business_modules.agents.models import Run, RunStatus, Step, StepKind, StepStatus
from business_modules.agents.ports import Services, ToolUnavailable
from business_modules.agents.prompt import build_messages
from business_modules.agents.schemas import json_size_bound
from business_modules.agents.tools import FINAL_ANSWER, FINAL_ANSWER_DESCRIPTION, TOOLS, ToolContext
from business_modules.llm_client import LLMClient, LLMError, LLMRequestSpec, LLMUnavailable, ToolSpec
from business_modules.storage import Database

logger = logging.getLogger(__name__)

INTERRUPTED_CALL = ("the replica running this call stopped before its outcome was stored; it may or may not have "
                    "happened, and it is not called again")


class RunLost(Exception):
    """The run is no longer this attempt's (cancelled, or adopted by another replica)."""


class RunLoop:
    """Advances runs; one instance per replica, shared by its runs."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: AgentsSettings, services: Services,
                 clock: Callable[[], float], caller: ToolCaller | None = None) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings
        self.services = services
        self._clock = clock
        self.caller = caller or ToolCaller(settings)

    async def drive(self, run: Run, attempt: str) -> None:
        """Advance ``run`` (claimed by ``attempt``) until it finishes or waits for an approval; `RunLost` when
        it stops being this attempt's."""
        agent = AgentDefinition.model_validate(run.agent)
        capability = agent.capability(run.capability)
        assert capability is not None, "the capability was checked when the run was created"
        context = run.context or await self._fix_context(run, capability, attempt)
        attempt_run = _Attempt(self, run, agent, capability, context, attempt)
        await attempt_run.advance()

    async def _fix_context(self, run: Run, capability: CapabilityDefinition, attempt: str) -> dict[str, Any]:
        """What the run offers the model, decided once (and stored) so every step's prompt head is the same."""
        corpora: list[str] = []
        note = None
        permitted = [name for name in capability.tools if TOOLS[name].permitted(run.scopes)]
        if self.services.corpora is not None and any(TOOLS[name].uses_corpora for name in permitted):
            try:
                corpora = await self.services.corpora.list_corpora(tenant=run.owner, limit=C.MAX_CORPORA_OFFERED)
            except ToolUnavailable as exc:
                note = f"the document corpora could not be listed: {exc}"
                logger.warning("run %s: %s", run.id, note)
        offered = [name for name in permitted if TOOLS[name].available(self.services, corpora)]
        today = datetime.fromtimestamp(run.created_at, tz=timezone.utc).date().isoformat()
        context: dict[str, Any] = {"tools": offered, "corpora": corpora[: C.MAX_CORPORA_OFFERED], "today": today}
        if note:
            context["note"] = note
        if not await repo.save_context(self.db, run.id, context, attempt_id=attempt, now=self._clock()):
            raise RunLost(run.id)
        return context


class _Attempt:
    """One attempt's view of one run: its definition, context and stored steps."""

    def __init__(self, loop: RunLoop, run: Run, agent: AgentDefinition, capability: CapabilityDefinition,
                 context: dict[str, Any], attempt: str) -> None:
        self.loop = loop
        self.run = run
        self.agent = agent
        self.capability = capability
        self.context = context
        self.attempt = attempt
        self.settings = loop.settings
        self.budget = Budget.of(run.parameters, loop.settings)
        self.steps: list[Step] = []
        self.steps_used = run.steps_used
        self.tokens_used = run.tokens_used
        corpora = context["corpora"]
        self.specs = [ToolSpec(name=n, description=TOOLS[n].description, parameters=TOOLS[n].parameters(corpora))
                      for n in context["tools"]]
        self.specs.append(ToolSpec(name=FINAL_ANSWER, description=FINAL_ANSWER_DESCRIPTION,
                                   parameters=capability.output_schema))
        self.bounds = {spec.name: json_size_bound(spec.parameters) for spec in self.specs}

    @property
    def now(self) -> float:
        return self.loop._clock()

    async def advance(self) -> None:
        self.steps = await repo.steps_of(self.loop.db, self.run.id)
        while True:
            model = self._last_model_step()
            if model is not None and model.status is StepStatus.RUNNING:
                if not await self._model_step(redo=model):
                    return
                continue
            pending = self._pending_call(model)
            if pending is None:
                if not await self._model_step(redo=None):
                    return
                continue
            call, existing = pending
            if not await self._handle_call(call, existing):
                return

    # -- reading the stored steps --------------------------------------------------------
    def _last_model_step(self) -> Step | None:
        return next((s for s in reversed(self.steps) if s.kind is StepKind.MODEL), None)

    def _pending_call(self, model: Step | None) -> tuple[dict[str, str], Step | None] | None:
        """The first call of the last model step without a settled tool step (and its step, if stored)."""
        if model is None or model.status is not StepStatus.COMPLETED:
            return None
        tool_steps = {s.call_id: s for s in self.steps if s.kind is StepKind.TOOL and s.index > model.index}
        for call in model.tool_calls:
            step = tool_steps.get(call["id"])
            if step is None or not step.status.settled:
                return call, step
        return None

    # -- storing ---------------------------------------------------------------------------
    async def _save(self, step: Step, *, count_usage: bool = False) -> None:
        step.updated_at = self.now
        if not await repo.save_step(self.loop.db, step, attempt_id=self.attempt, now=step.updated_at,
                                    count_usage=count_usage):
            raise RunLost(self.run.id)
        if step.index == len(self.steps):
            self.steps.append(step)
        else:
            self.steps[step.index] = step

    async def _finish(self, status: RunStatus, *, result: Any = None, error: str | None = None,
                      step: Step | None = None) -> None:
        if not await repo.finish(self.loop.db, self.run.id, attempt_id=self.attempt, status=status, now=self.now,
                                 result=result, error=error, step=step):
            raise RunLost(self.run.id)

    def _new_step(self, kind: StepKind, **fields: Any) -> Step:
        now = self.now
        return Step(run_id=self.run.id, index=len(self.steps), kind=kind, status=StepStatus.RUNNING, started_at=now,
                    updated_at=now, **fields)

    # -- model calls -----------------------------------------------------------------------
    async def _model_step(self, *, redo: Step | None) -> bool:
        """One LLM call (a new step, or again for one in flight when the last attempt stopped). False: the run
        ended."""
        history = [s for s in self.steps if redo is None or s.index < redo.index]
        messages = build_messages(self.agent, self.capability, inputs=self.run.inputs, context=self.context,
                                  dry_run=self.run.dry_run, steps=history,
                                  result_chars=self.settings.tool_result_chars)
        estimate = next_prompt_estimate(history, result_chars=self.settings.tool_result_chars)
        try:
            plan = plan_step(budget=self.budget, steps_used=self.steps_used, tokens_used=self.tokens_used,
                             prompt_estimate=first_prompt_estimate(messages, self.specs) if estimate is None
                             else estimate, bounds=self.bounds, start_with=self.capability.start_with,
                             settings=self.settings)
        except BudgetExhausted as exc:
            await self._finish(RunStatus.FAILED, error=str(exc))
            return False
        step = redo or self._new_step(StepKind.MODEL)
        step.started_at, step.attempts = self.now, step.attempts + 1
        await self._save(step)  # the intent: a replica that stops here asks again
        parameters = self.run.parameters
        spec = LLMRequestSpec(messages=messages, tools=self.specs, tool_choice=plan.tool_choice,
                              max_tokens=plan.max_tokens, temperature=float(parameters.get("temperature") or 0.0),
                              seed=parameters.get("seed"), tenant_id=self.run.owner or None,
                              timeout_s=self.settings.llm_timeout_s,
                              metadata={"request_id": self.run.id, "step": str(step.index)})
        try:
            generation = await self._generate(spec)
        except LLMError as exc:
            step.status, step.error, step.finished_at = StepStatus.FAILED, f"LLM call failed: {exc}", self.now
            await self._finish(RunStatus.FAILED, error=step.error, step=step)
            return False
        usage = generation.usage
        step.prompt_tokens, step.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        step.cached_tokens, step.ttft_ms, step.latency_ms = usage.cached_tokens, generation.ttft_ms, generation.latency_ms
        step.finish_reason, step.text, step.finished_at = generation.finish_reason, generation.text, self.now
        step.tool_calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in generation.tool_calls]
        if step.tool_calls:
            step.status = StepStatus.COMPLETED
        else:
            step.status = StepStatus.INVALID
            step.error = f"the model answered without calling a tool (finish reason {generation.finish_reason})"
        await self._save(step, count_usage=True)
        self.steps_used += 1
        self.tokens_used += usage.prompt_tokens + usage.completion_tokens
        return True

    async def _generate(self, spec: LLMRequestSpec) -> Any:
        tries = 1 + self.settings.llm_retries
        for attempt in range(1, tries + 1):
            try:
                return await self.loop.llm.generate(spec)
            except LLMUnavailable:
                if attempt == tries:
                    raise
                logger.info("run %s: the LLM was unavailable; asking again", self.run.id)
                await asyncio.sleep(self.settings.tool_retry_backoff_s * attempt)
        raise AssertionError("unreachable")

    # -- tool calls ------------------------------------------------------------------------
    async def _handle_call(self, call: dict[str, str], existing: Step | None) -> bool:
        """Settle one call (or wait for its approval). False: the run ended or waits."""
        step = existing or self._new_step(StepKind.TOOL, tool_name=call["name"], call_id=call["id"],
                                          arguments=call["arguments"])
        if call["name"] == FINAL_ANSWER:
            return await self._final_answer(step, call)
        try:
            tool, args = read_call(call["name"], call["arguments"], offered=self.context["tools"],
                                   corpora=self.context["corpora"])
        except InvalidCall as exc:
            return await self._settle(step, StepStatus.INVALID, error=str(exc))
        if existing is None:
            if tool.side_effects and self.run.dry_run:
                return await self._settle(step, StepStatus.SKIPPED, result={"tool": tool.name,
                                                                            "arguments": args.model_dump()})
            if tool.side_effects:
                step.status = StepStatus.AWAITING_APPROVAL
                step.updated_at = self.now
                if not await repo.await_approval(self.loop.db, step, attempt_id=self.attempt, now=self.now):
                    raise RunLost(self.run.id)
                return False
        elif existing.status is StepStatus.AWAITING_APPROVAL:
            if not await repo.await_approval(self.loop.db, existing, attempt_id=self.attempt, now=self.now):
                raise RunLost(self.run.id)
            return False
        elif existing.status is StepStatus.RUNNING and tool.side_effects:
            return await self._settle(step, StepStatus.INTERRUPTED, error=INTERRUPTED_CALL)
        return await self._call(step, tool, args)

    async def _call(self, step: Step, tool: Any, args: Any) -> bool:
        ctx = ToolContext(run_id=self.run.id, tenant=self.run.owner,
                          today=datetime.fromisoformat(self.context["today"]).date(),
                          corpora=tuple(self.context["corpora"]), services=self.loop.services,
                          timeout_s=self.loop.caller.timeout_for(tool))

        async def intent(attempt: int) -> None:
            step.status, step.attempts, step.started_at = StepStatus.RUNNING, attempt, self.now
            await self._save(step)

        outcome = await self.loop.caller.call(tool, args, ctx, first_attempt=step.attempts + 1, on_attempt=intent)
        if outcome.ok:
            return await self._settle(step, StepStatus.COMPLETED, result=outcome.result)
        return await self._settle(step, StepStatus.FAILED, error=outcome.error)

    async def _settle(self, step: Step, status: StepStatus, *, result: Any = None, error: str | None = None) -> bool:
        step.status, step.result, step.error, step.finished_at = status, result, error, self.now
        await self._save(step)
        return True

    async def _final_answer(self, step: Step, call: dict[str, str]) -> bool:
        try:
            answer = read_final_answer(call["arguments"], self.capability.output_schema)
        except InvalidCall as exc:
            return await self._settle(step, StepStatus.INVALID, error=str(exc))
        step.status, step.result, step.finished_at, step.updated_at = StepStatus.COMPLETED, answer, self.now, self.now
        await self._finish(RunStatus.COMPLETED, result=answer, step=step)
        return False
