"""Response shapes of the agents API (requests use `business_modules.agents` models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ToolOut(BaseModel):
    name: str
    description: str
    side_effects: bool = Field(description="It writes something outside the run; it waits for an approval.")
    idempotent: bool = Field(description="Retried when its service was unavailable.")
    parameters: dict[str, Any] = Field(description="JSON Schema of its arguments.")


class CapabilityOut(BaseModel):
    name: str
    description: str
    instructions: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    tools: list[ToolOut]
    start_with: str | None = None


class AgentOut(BaseModel):
    """``GET /agents/{id}``: an agent and what each capability takes, may use and gives back."""

    agent_id: str
    name: str
    description: str
    business_area: str
    builtin: bool = Field(description="From the catalogue (true) or defined by this tenant (false).")
    capabilities: list[CapabilityOut]


class PendingApproval(BaseModel):
    step: int
    tool: str
    arguments: Any
    approve_url: str
    reject_url: str


class Execution(BaseModel):
    """``POST .../execute``: the original API's fields, plus the run's id and where to follow it."""

    status: str = Field(description="completed, failed or cancelled (200); queued, running or awaiting_approval "
                                    "(202)")
    agent_id: str
    capability: str
    result: Any = None
    error: str | None = None
    execution_time: float = Field(description="Seconds from submission to the end (or to now).")
    run_id: str
    run_url: str
    events_url: str
    pending_approval: PendingApproval | None = None


class ModelCall(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = Field(description="Prompt tokens served from the KV cache.")
    ttft_ms: float | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]]
    text: str | None = None


class StepOut(BaseModel):
    index: int
    kind: str = Field(description="model (one LLM call) or tool (one tool call)")
    status: str
    tool: str | None = None
    call_id: str | None = None
    arguments: Any = None
    result: Any = None
    error: str | None = None
    attempts: int
    side_effects: bool | None = None
    model: ModelCall | None = None
    latency_ms: float | None = None
    started_at: str
    finished_at: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int


class Budget(BaseModel):
    max_steps: int
    max_tokens: int


class RunOut(BaseModel):
    """``GET /runs/{id}``: the run and every step."""

    run_id: str
    status: str
    agent_id: str
    capability: str
    inputs: dict[str, Any]
    parameters: dict[str, Any]
    dry_run: bool
    tools: list[str] = Field(description="The tools the run offers the model (besides final_answer), fixed at its "
                                         "first step: a capability's tools this replica and tenant can use.")
    result: Any = None
    error: str | None = None
    execution_time: float
    steps_used: int
    budget: Budget
    usage: Usage
    pending_approval: PendingApproval | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    events_url: str
    steps: list[StepOut] | None = Field(None, description="Every step, oldest first (left out of lists).")


class RunList(BaseModel):
    runs: list[RunOut]
