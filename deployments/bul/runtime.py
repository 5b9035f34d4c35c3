"""Per-replica state of the BUL app: database, LLM client, job service.

The database is opened (and the ``bul`` migrations applied) on first use
under a lock by `deployments.common.service_runtime.ServiceRuntime`, so a
replica starts even while the database is briefly unreachable and answers 503
until it is back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.bul import BulService, BulSettings
from business_modules.bul import repository as _bul_repository  # noqa: F401 - registers bul migrations
from business_modules.llm_client import LLMClient
from business_modules.storage import Database
from deployments.common.service_runtime import ServiceRuntime


class BulAppConfig(BaseModel):
    """Application args (serve_config.yaml ``args``, or ``.bind(...)`` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the embedded SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    data_dir: Path | None = Field(None, description="default: BLATAM_DATA_DIR")
    llm_app: str = Field("llm", description="Serve application of the LLM this service calls.")
    settings: dict[str, Any] = Field(default_factory=dict, description="BulSettings overrides (else BUL_*)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger request bodies get 413.")


class Runtime(ServiceRuntime[BulService]):
    """Lazily started `BulService` of one replica (or one test app)."""

    component = "bul"

    def __init__(self, config: BulAppConfig, *, llm: LLMClient | None = None) -> None:
        super().__init__(config)
        self.config = config
        self.settings = BulSettings(**config.settings)
        self._llm = llm

    def _llm_client(self) -> LLMClient:
        if self._llm is None:
            from deployments.common.llm_handle import LLMHandleClient

            self._llm = LLMHandleClient(app_name=self.config.llm_app)
        return self._llm

    def _build(self, db: Database) -> BulService:
        return BulService(db=db, llm=self._llm_client(), settings=self.settings, runner_id=self.runner_id)
