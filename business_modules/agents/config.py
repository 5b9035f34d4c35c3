"""Settings of Business Agents (environment variables ``AGENTS_*``); defaults in `constants`."""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from business_modules.agents import constants as C


class AgentsSettings(BaseSettings):
    """Budgets, timeouts, leases and per-tenant bounds of agent runs."""

    model_config = SettingsConfigDict(env_prefix="AGENTS_", extra="ignore", validate_default=True)

    default_max_steps: PositiveInt = C.DEFAULT_MAX_STEPS
    max_steps_limit: PositiveInt = C.MAX_STEPS_LIMIT
    default_token_budget: PositiveInt = C.DEFAULT_TOKEN_BUDGET
    token_budget_limit: PositiveInt = C.TOKEN_BUDGET_LIMIT
    step_max_tokens: int = Field(C.STEP_MAX_TOKENS, ge=64)
    context_tokens: int = Field(C.CONTEXT_TOKENS, ge=512, description="The LLM's context length.")
    tool_result_chars: int = Field(C.TOOL_RESULT_CHARS, ge=200)
    llm_timeout_s: PositiveFloat = C.LLM_TIMEOUT_S
    llm_retries: NonNegativeInt = C.LLM_RETRIES
    tool_timeout_s: PositiveFloat = Field(C.TOOL_TIMEOUT_S, description="Longest wait for any one tool call.")
    document_timeout_s: PositiveFloat = Field(180.0, description="Longest wait for a BUL document (write_document).")
    tool_retries: NonNegativeInt = C.TOOL_RETRIES
    tool_retry_backoff_s: float = Field(C.TOOL_RETRY_BACKOFF_S, ge=0)
    run_lease_s: PositiveFloat = C.RUN_LEASE_S
    run_heartbeat_s: PositiveFloat = C.RUN_HEARTBEAT_S
    max_running_per_tenant: PositiveInt = C.MAX_RUNNING_PER_TENANT
    max_pending_per_tenant: PositiveInt = C.MAX_PENDING_PER_TENANT
    default_wait_s: float = Field(C.DEFAULT_WAIT_S, ge=0)
    max_wait_s: float = Field(C.MAX_WAIT_S, ge=0)
    max_agents_per_tenant: PositiveInt = C.MAX_AGENTS_PER_TENANT

    @model_validator(mode="after")
    def _consistent(self) -> AgentsSettings:
        if self.run_heartbeat_s * 2 > self.run_lease_s:
            raise ValueError(
                f"run_heartbeat_s ({self.run_heartbeat_s:g}) must be at most half of run_lease_s "
                f"({self.run_lease_s:g}), or live runs would be taken for dead ones and resumed twice")
        if self.default_max_steps > self.max_steps_limit:
            raise ValueError(f"default_max_steps ({self.default_max_steps}) exceeds max_steps_limit "
                             f"({self.max_steps_limit})")
        if self.default_token_budget > self.token_budget_limit:
            raise ValueError(f"default_token_budget ({self.default_token_budget}) exceeds token_budget_limit "
                             f"({self.token_budget_limit})")
        if self.default_wait_s > self.max_wait_s:
            raise ValueError(f"default_wait_s ({self.default_wait_s:g}) exceeds max_wait_s ({self.max_wait_s:g})")
        if self.step_max_tokens * 2 > self.context_tokens:
            raise ValueError(f"step_max_tokens ({self.step_max_tokens}) must be at most half of context_tokens "
                             f"({self.context_tokens})")
        return self
