"""Per-replica state of the gamma app: database, LLM client, generation service.

The database is opened (and the ``gamma`` migrations applied) on first use
under a lock, so a replica starts even while the database is briefly
unreachable and answers 503 until it is back. The LLM client is built by the
config's ``llm_client`` factory (tests) or over the ``llm_app`` Serve
application's handle.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.gamma import GammaService, GammaSettings
from business_modules.llm_client import LLMClient
from business_modules.settings import load_settings
from business_modules.storage import Database, StorageError, open_database

logger = logging.getLogger(__name__)

DB_OPEN_TIMEOUT_S = 15.0


class GammaAppConfig(BaseModel):
    """Application args (serve_config.yaml ``args``, or ``.bind(...)`` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the embedded SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    data_dir: Path | None = Field(None, description="default: BLATAM_DATA_DIR (home of the embedded SQLite file)")
    llm_app: str = Field("llm", description="Serve application of the LLM the cards are written by")
    settings: dict[str, Any] = Field(default_factory=dict, description="GammaSettings overrides (else GAMMA_*)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="Larger request bodies get 413.")


class Runtime:
    """Lazily started `GammaService` of one replica (or one test app)."""

    def __init__(self, config: GammaAppConfig, *, llm_factory: Callable[[], LLMClient] | None = None) -> None:
        self.config = config
        self.settings = GammaSettings(**config.settings)
        shared = load_settings({})
        self.data_dir = Path(config.data_dir or shared.blatam_data_dir)
        self.database_url = config.database_url or shared.database_url
        self._shared = shared
        self._llm_factory = llm_factory or self._handle_client
        self._db: Database | None = None
        self._service: GammaService | None = None
        self._lock = asyncio.Lock()
        self.runner_id = uuid.uuid4().hex

    def _handle_client(self) -> LLMClient:
        from deployments.common.llm_handle import LLMHandleClient

        return LLMHandleClient(app_name=self.config.llm_app)

    async def service(self) -> GammaService:
        """The started service, opening (and migrating) the database on first call."""
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    kwargs: dict[str, Any] = {
                        "components": ["gamma"],
                        "data_dir": self.data_dir,
                        "command_timeout_s": self._shared.db_command_timeout_s,
                        "acquire_timeout_s": self._shared.db_acquire_timeout_s,
                    }
                    if self.config.database_schema:
                        kwargs["schema"] = self.config.database_schema
                    db = await asyncio.wait_for(open_database(self.database_url, **kwargs), DB_OPEN_TIMEOUT_S)
                    service = GammaService(db=db, llm=self._llm_factory(), settings=self.settings,
                                           runner_id=self.runner_id)
                    try:
                        await service.start()
                    except BaseException:
                        await db.close()
                        raise
                    self._db, self._service = db, service
        return self._service

    async def try_start(self) -> None:
        try:
            await self.service()
        except (StorageError, TimeoutError, OSError) as exc:
            logger.warning("gamma: database not reachable at start (%s); will retry on first request", exc)

    async def ping(self) -> None:
        await self.service()
        assert self._db is not None
        await self._db.ping()

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._db is not None:
            await self._db.close()
        self._db = self._service = None
