"""Per-replica state of the gamma app: database, LLM client, generation service.

The database is opened (and the ``gamma`` migrations applied) on first use
under a lock, so a replica starts even while the database is briefly
unreachable and answers 503 until it is back. The LLM client is built by the
config's ``llm_client`` factory (tests) or over the ``llm_app`` Serve
application's handle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.gamma import GammaService, GammaSettings
from business_modules.llm_client import LLMClient
from business_modules.storage import Database
from deployments.common.service_runtime import ServiceRuntime


class GammaAppConfig(BaseModel):
    """Application args (serve_config.yaml ``args``, or ``.bind(...)`` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the embedded SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    data_dir: Path | None = Field(None, description="default: BLATAM_DATA_DIR (home of the embedded SQLite file)")
    llm_app: str = Field("llm", description="Serve application of the LLM the cards are written by")
    settings: dict[str, Any] = Field(default_factory=dict, description="GammaSettings overrides (else GAMMA_*)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies get 413.")


class Runtime(ServiceRuntime[GammaService]):
    """Lazily started `GammaService` of one replica (or one test app)."""

    component = "gamma"

    def __init__(self, config: GammaAppConfig, *, llm_factory: Callable[[], LLMClient] | None = None) -> None:
        super().__init__(config)
        self.config = config
        self.settings = GammaSettings(**config.settings)
        self._llm_factory = llm_factory or self._handle_client

    def _handle_client(self) -> LLMClient:
        from deployments.common.llm_handle import LLMHandleClient

        return LLMHandleClient(app_name=self.config.llm_app)

    def _build(self, db: Database) -> GammaService:
        return GammaService(db=db, llm=self._llm_factory(), settings=self.settings, runner_id=self.runner_id)
