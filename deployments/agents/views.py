"""Shaping the agents' records into API answers (`schemas`): agents, runs, steps, executions."""

from __future__ import annotations

import json
import time
from typing import Any

from business_modules.agents import AgentEntry, AgentsSettings, Run, RunStatus, Step, StepKind, StepStatus
from business_modules.agents.budget import Budget
from business_modules.agents.tools import TOOLS
from deployments.agents import schemas as s
from deployments.common.service_app import iso_time


def agent_out(entry: AgentEntry) -> s.AgentOut:
    agent = entry.definition
    return s.AgentOut(
        agent_id=agent.id, name=agent.name, description=agent.description, business_area=agent.business_area,
        builtin=entry.builtin,
        capabilities=[s.CapabilityOut(
            name=c.name, description=c.description, instructions=c.instructions, input_schema=c.input_schema,
            output_schema=c.output_schema, start_with=c.start_with,
            tools=[s.ToolOut(name=t, description=TOOLS[t].description, side_effects=TOOLS[t].side_effects,
                             idempotent=TOOLS[t].idempotent, parameters=TOOLS[t].parameters([]))
                   for t in c.tools]) for c in agent.capabilities])


def execution_time(run: Run, now: float | None = None) -> float:
    end = run.finished_at if run.finished_at is not None else (now or time.time())
    return round(max(0.0, end - run.created_at), 3)


def _arguments(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # what the model wrote, as it wrote it (cut short, not JSON)


def step_out(step: Step) -> s.StepOut:
    model = None
    latency = step.latency_ms
    if step.kind is StepKind.MODEL:
        model = s.ModelCall(prompt_tokens=step.prompt_tokens, completion_tokens=step.completion_tokens,
                            cached_tokens=step.cached_tokens, ttft_ms=step.ttft_ms, finish_reason=step.finish_reason,
                            tool_calls=[{**c, "arguments": _arguments(c["arguments"])} for c in step.tool_calls],
                            text=step.text or None)
    elif step.finished_at is not None:
        latency = round((step.finished_at - step.started_at) * 1000, 1)
    tool = TOOLS.get(step.tool_name or "")
    return s.StepOut(index=step.index, kind=step.kind.value, status=step.status.value, tool=step.tool_name,
                     call_id=step.call_id, arguments=_arguments(step.arguments), result=step.result, error=step.error,
                     attempts=step.attempts, side_effects=None if tool is None else tool.side_effects, model=model,
                     latency_ms=latency, started_at=iso_time(step.started_at) or "",
                     finished_at=iso_time(step.finished_at))


def pending_approval(run: Run, steps: list[Step] | None, base: str) -> s.PendingApproval | None:
    if run.status is not RunStatus.AWAITING_APPROVAL or not steps:
        return None
    waiting = next((st for st in reversed(steps) if st.status is StepStatus.AWAITING_APPROVAL), None)
    if waiting is None:
        return None
    return s.PendingApproval(step=waiting.index, tool=waiting.tool_name or "", arguments=_arguments(waiting.arguments),
                             approve_url=f"{base}/runs/{run.id}/approve", reject_url=f"{base}/runs/{run.id}/reject")


def run_out(run: Run, steps: list[Step] | None, base: str, settings: AgentsSettings) -> s.RunOut:
    budget = Budget.of(run.parameters, settings)
    return s.RunOut(
        run_id=run.id, status=run.status.value, agent_id=run.agent_id, capability=run.capability, inputs=run.inputs,
        parameters=run.parameters, dry_run=run.dry_run, tools=list((run.context or {}).get("tools", [])),
        result=run.result, error=run.error,
        execution_time=execution_time(run), steps_used=run.steps_used,
        budget=s.Budget(max_steps=budget.max_steps, max_tokens=budget.max_tokens),
        usage=s.Usage(prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
                      cached_tokens=run.cached_tokens, total_tokens=run.tokens_used),
        pending_approval=pending_approval(run, steps, base), created_at=iso_time(run.created_at) or "",
        started_at=iso_time(run.started_at), finished_at=iso_time(run.finished_at),
        events_url=f"{base}/runs/{run.id}/events", steps=None if steps is None else [step_out(x) for x in steps])


def execution(run: Run, steps: list[Step] | None, base: str) -> s.Execution:
    return s.Execution(status=run.status.value, agent_id=run.agent_id, capability=run.capability, result=run.result,
                       error=run.error, execution_time=execution_time(run), run_id=run.id,
                       run_url=f"{base}/runs/{run.id}", events_url=f"{base}/runs/{run.id}/events",
                       pending_approval=pending_approval(run, steps, base))
