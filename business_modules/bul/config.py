"""Settings of BUL (environment variables ``BUL_*``); defaults in `constants`."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from business_modules.bul import constants as C


class BulSettings(BaseSettings):
    """Generation budgets, leases and per-tenant bounds of BUL jobs."""

    model_config = SettingsConfigDict(env_prefix="BUL_", extra="ignore", validate_default=True)

    llm_timeout_s: PositiveFloat = C.LLM_TIMEOUT_S
    section_tokens_short: PositiveInt = C.SECTION_MAX_TOKENS["short"]
    section_tokens_medium: PositiveInt = C.SECTION_MAX_TOKENS["medium"]
    section_tokens_long: PositiveInt = C.SECTION_MAX_TOKENS["long"]
    outline_note_chars: int = Field(C.OUTLINE_NOTE_CHARS, ge=4, le=200)
    job_lease_s: PositiveFloat = C.JOB_LEASE_S
    job_heartbeat_s: PositiveFloat = C.JOB_HEARTBEAT_S
    max_running_per_tenant: PositiveInt = C.MAX_RUNNING_PER_TENANT
    max_pending_per_tenant: PositiveInt = C.MAX_PENDING_PER_TENANT
    render_timeout_s: PositiveFloat = C.RENDER_TIMEOUT_S

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> BulSettings:
        if self.job_heartbeat_s * 2 > self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s:g}) must be at most half of job_lease_s "
                f"({self.job_lease_s:g}), or live jobs would be taken for dead ones"
            )
        return self

    def section_tokens(self, length: str) -> int:
        return {"short": self.section_tokens_short, "medium": self.section_tokens_medium,
                "long": self.section_tokens_long}[length]
