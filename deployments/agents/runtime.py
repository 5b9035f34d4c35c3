"""Per-replica state of the agents app: database, LLM client, the other services' ports, the agents service.

The database is opened (and the ``agents`` migrations applied) on first use
under a lock by `deployments.common.service_runtime.ServiceRuntime`, so a
replica starts even while the database is briefly unreachable and answers
503 until it is back; on start the service adopts the runs a stopped replica
left and resumes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from business_modules.agents import AgentsService, AgentsSettings, Services
from business_modules.agents import repository as _agents_repository  # noqa: F401 - registers agents migrations
from business_modules.llm_client import LLMClient
from business_modules.storage import Database
from deployments.common.service_runtime import ServiceRuntime


class AgentsAppConfig(BaseModel):
    """Application args (serve_config.yaml ``args``, or ``.bind(...)`` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the embedded SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    data_dir: Path | None = Field(None, description="default: BLATAM_DATA_DIR")
    llm_app: str = Field("llm", description="Serve application of the LLM the agents think with.")
    redundancy_app: str | None = Field("redundancy", description="Corpora for search_documents/check_text; "
                                                                 "null: those tools are not offered.")
    bul_app: str | None = Field("bul", description="Documents for write_document; null: not offered.")
    export_app: str | None = Field("export", description="Files for export_result; null: not offered.")
    service_timeout_s: PositiveFloat = Field(20.0, description="Bound of one call to another service.")
    settings: dict[str, Any] = Field(default_factory=dict, description="AgentsSettings overrides (else AGENTS_*)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Larger request bodies get 413.")


class Runtime(ServiceRuntime[AgentsService]):
    """Lazily started `AgentsService` of one replica (or one test app)."""

    component = "agents"

    def __init__(self, config: AgentsAppConfig, *, llm: LLMClient | None = None,
                 services: Services | None = None) -> None:
        super().__init__(config)
        self.config = config
        self.settings = AgentsSettings(**config.settings)
        self._llm = llm
        self._services = services

    def _llm_client(self) -> LLMClient:
        if self._llm is None:
            from deployments.common.llm_handle import LLMHandleClient

            self._llm = LLMHandleClient(app_name=self.config.llm_app)
        return self._llm

    def _ports(self) -> Services:
        if self._services is None:
            from deployments.agents.ports import HandleCorpora, HandleDocuments, HandleExports, ServiceCalls

            calls = ServiceCalls(timeout_s=self.config.service_timeout_s)
            c = self.config
            self._services = Services(
                corpora=HandleCorpora(calls, c.redundancy_app) if c.redundancy_app else None,
                documents=HandleDocuments(calls, c.bul_app) if c.bul_app else None,
                exports=HandleExports(calls, c.export_app) if c.export_app else None)
        return self._services

    def _build(self, db: Database) -> AgentsService:
        return AgentsService(db=db, llm=self._llm_client(), settings=self.settings, services=self._ports(),
                             runner_id=self.runner_id)
