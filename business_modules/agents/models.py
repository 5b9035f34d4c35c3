"""Runs and steps: their closed sets of states, the stored records, and the typed requests that create them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents import constants as C


class RunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepKind(str, enum.Enum):
    MODEL = "model"
    """One LLM call with the run's whole history; it answers with a tool call."""
    TOOL = "tool"
    """One tool call the model asked for (or its final answer)."""


class StepStatus(str, enum.Enum):
    RUNNING = "running"
    """Started and not finished: for a tool, the intent is recorded before the call."""
    COMPLETED = "completed"
    FAILED = "failed"
    INVALID = "invalid"
    """The model asked for an unknown tool, wrote invalid arguments, or answered without a call."""
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    """A dry run: a tool with side effects was not called."""
    INTERRUPTED = "interrupted"
    """A tool with side effects whose replica stopped during the call: its outcome is unknown and it is
    never called again."""

    @property
    def settled(self) -> bool:
        """The step is over and (for a tool) its outcome goes back to the model."""
        return self in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.INVALID, StepStatus.REJECTED,
                        StepStatus.SKIPPED, StepStatus.INTERRUPTED)


@dataclass(slots=True)
class Step:
    """One row of ``agent_steps``. Model steps carry usage and the calls; tool steps the call and its outcome."""

    run_id: str
    index: int
    kind: StepKind
    status: StepStatus
    started_at: float
    updated_at: float
    tool_name: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    result: Any = None
    error: str | None = None
    attempts: int = 0
    text: str | None = None
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """One row of ``agent_runs``. ``agent`` is the definition as it was when the run was created, so a later
    change to a tenant's agent never changes a run; ``context`` is what the run offers the model
    (tool names, the tenant's corpora), fixed at its first step so a resumed run sees the same prompt."""

    id: str
    owner: str | None
    agent_id: str
    capability: str
    agent: dict[str, Any]
    inputs: dict[str, Any]
    parameters: dict[str, Any]
    dry_run: bool
    status: RunStatus
    created_at: float
    updated_at: float
    scopes: tuple[str, ...] | None = None
    """The caller's gateway scopes (None: a direct call); the run offers only tools within them."""
    context: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    steps_used: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    runner_id: str | None = None
    attempt_id: str | None = None
    lease_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RunParameters(BaseModel):
    """``parameters`` of an execution: budgets and sampling (each bounded by the service's settings)."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(None, ge=1, description="Model calls at most (default: the service's).")
    max_tokens: int | None = Field(None, ge=256, description="Prompt + completion tokens of all model calls.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    wait_s: float | None = Field(None, ge=0, description="How long to wait for the result before answering 202.")


class ExecuteRequest(BaseModel):
    """``POST /agents/{id}/capabilities/{capability}/execute`` (the original API's ``{inputs, parameters?}``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict, description="Fields of the capability's input schema.")
    parameters: RunParameters = Field(default_factory=RunParameters)
    dry_run: bool = Field(False, description="Tools with side effects are not called; the model is told so.")


class RejectRequest(BaseModel):
    """``POST /runs/{id}/reject``: the reason goes back to the model as the call's outcome."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("rejected by the user", min_length=1, max_length=C.MAX_REASON_CHARS)
