"""Settings of the export service (environment variables ``EXPORT_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from business_modules.export import constants as C


class ExportSettings(BaseSettings):
    """Timeouts, leases and retention of export jobs; defaults in `constants`."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore", validate_default=True)

    results_dir: Path | None = Field(None, description="Result files; default <BLATAM_DATA_DIR>/exports.")
    render_timeout_s: PositiveFloat = C.RENDER_TIMEOUT_S
    job_lease_s: PositiveFloat = C.JOB_LEASE_S
    job_heartbeat_s: PositiveFloat = C.JOB_HEARTBEAT_S
    result_retention_s: PositiveFloat = C.RESULT_RETENTION_S
    max_concurrent_renders: PositiveInt = C.MAX_CONCURRENT_RENDERS
    max_pending_jobs: PositiveInt = Field(64, description="Unfinished jobs one replica accepts before 503.")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ExportSettings:
        if self.job_heartbeat_s * 2 > self.job_lease_s:
            raise ValueError(
                f"job_heartbeat_s ({self.job_heartbeat_s:g}) must be at most half of job_lease_s "
                f"({self.job_lease_s:g}), or live jobs would be taken for dead ones"
            )
        return self

    def resolved_results_dir(self, data_dir: Path) -> Path:
        return self.results_dir if self.results_dir is not None else data_dir / "exports"
