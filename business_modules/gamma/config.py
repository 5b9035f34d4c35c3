"""Settings of Gamma (environment variables ``GAMMA_*``)."""

from __future__ import annotations

from pydantic import PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from business_modules.gamma import constants as C


class GammaSettings(BaseSettings):
    """Timeouts, leases, concurrency and retention of generations; defaults in `constants`."""

    model_config = SettingsConfigDict(env_prefix="GAMMA_", extra="ignore", validate_default=True)

    llm_call_timeout_s: PositiveFloat = C.LLM_CALL_TIMEOUT_S
    outline_max_tokens: PositiveInt = C.OUTLINE_MAX_TOKENS
    card_max_tokens: PositiveInt = C.CARD_MAX_TOKENS
    job_lease_s: PositiveFloat = C.JOB_LEASE_S
    job_heartbeat_s: PositiveFloat = C.JOB_HEARTBEAT_S
    result_retention_s: PositiveFloat = C.RESULT_RETENTION_S
    max_concurrent_generations: PositiveInt = C.MAX_CONCURRENT_GENERATIONS
    max_pending_jobs: PositiveInt = C.MAX_PENDING_JOBS
    content_wait_s: PositiveFloat = C.CONTENT_WAIT_S

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> GammaSettings:
        if self.job_heartbeat_s * 2 > self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s:g}) must be at most half of job_lease_s "
                f"({self.job_lease_s:g}), or live generations would be taken for dead ones"
            )
        return self
