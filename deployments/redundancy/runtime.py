"""Per-replica state of the redundancy app: settings, database, service.

The database is opened on first use (not at import or construction), under
a lock, so a replica starts even while the database is briefly unreachable
and answers 503 until it is back. The embedding model is loaded by the
detector on the first semantic request, once per replica.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.redundancy import Detector, RedundancySettings
from business_modules.redundancy.embeddings import shared_encoder
from business_modules.redundancy.repository import CorpusRepository
from business_modules.redundancy.service import RedundancyService
from business_modules.settings import StorageSettings
from business_modules.storage import Database, open_database

DB_OPEN_TIMEOUT_S = 15.0


class RedundancyAppConfig(BaseModel):
    """Application args (serve_config.yaml `args`, or `.bind(...)` in tests)."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(None, description="default: DATABASE_URL, else the SQLite file")
    database_schema: str | None = Field(None, description="PostgreSQL schema (tests use a private one)")
    settings: dict[str, Any] = Field(default_factory=dict, description="RedundancySettings overrides")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class Runtime:
    """Lazily built service of one replica (or one test app)."""

    def __init__(self, config: RedundancyAppConfig) -> None:
        self.config = config
        self.settings = RedundancySettings(**config.settings)
        self.detector = Detector(self.settings, shared_encoder())
        self._db: Database | None = None
        self._service: RedundancyService | None = None
        self._lock = asyncio.Lock()
        self.requests: Counter[str] = Counter()  # "METHOD /route" -> count, this replica

    async def service(self) -> RedundancyService:
        """The service, opening (and migrating) the database on first call."""
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    url = self.config.database_url or StorageSettings().database_url
                    kwargs: dict[str, Any] = {"components": ["redundancy"]}
                    if self.config.database_schema:
                        kwargs["schema"] = self.config.database_schema
                    self._db = await asyncio.wait_for(open_database(url, **kwargs), DB_OPEN_TIMEOUT_S)
                    self._service = RedundancyService(CorpusRepository(self._db), self.detector)
        return self._service

    async def ping(self) -> None:
        """Raise a storage error when the database does not answer."""
        await self.service()
        await self._db.ping()

    async def close(self) -> None:
        """Release the database connections."""
        if self._db is not None:
            await self._db.close()
            self._db = self._service = None
