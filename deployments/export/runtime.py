"""Per-replica state of the export app: database, result folder, job service.

The database is opened (and the ``export`` migrations applied) on first use
under a lock, so a replica starts even while the database is briefly
unreachable and answers 503 until it is back. The app's lifespan tries once
at start, so the heartbeat (lease renewal, stale-job sweep, purge of expired
results) runs from the beginning when the database is up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.export import ExportService, ExportSettings, ResultStore
from business_modules.storage import Database
from deployments.common.service_runtime import ServiceRuntime


class ExportAppConfig(BaseModel):
    """Application args (serve_config.yaml ``args``, or ``.bind(...)`` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the embedded SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    data_dir: Path | None = Field(None, description="default: BLATAM_DATA_DIR (result files go to <data_dir>/exports)")
    settings: dict[str, Any] = Field(default_factory=dict, description="ExportSettings overrides (else EXPORT_*)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description=(
        "Larger request bodies get 413 (MAX_CONTENT_CHARS of content, escaped, fits well within)."))


class Runtime(ServiceRuntime[ExportService]):
    """Lazily started `ExportService` of one replica (or one test app)."""

    component = "export"

    def __init__(self, config: ExportAppConfig) -> None:
        super().__init__(config)
        self.config = config
        self.settings = ExportSettings(**config.settings)

    def _build(self, db: Database) -> ExportService:
        results = ResultStore(self.settings.resolved_results_dir(self.data_dir))
        return ExportService(db=db, results=results, settings=self.settings, runner_id=self.runner_id)
