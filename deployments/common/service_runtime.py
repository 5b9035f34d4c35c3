"""The per-replica state every job service shares: its database, opened lazily, and the service started on it.

Export, BUL and Gamma each run a job service on a database. The database is
opened (and the component's migrations applied) on first use under a lock,
so a replica starts even while the database is briefly unreachable and
answers 503 until it is back; the app's lifespan tries once at start
(`try_start`), so the service's heartbeat runs from the beginning when the
database is up. A subclass names its migration component and builds its
service on the opened database (`_build`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from business_modules.settings import StorageSettings
from business_modules.storage import Database, StorageError, open_database

logger = logging.getLogger(__name__)

DB_OPEN_TIMEOUT_S = 15.0


class StartableService(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class DatabaseArgs(Protocol):
    """The application args a runtime reads (each app's config model has them)."""

    database_url: str | None
    database_schema: str | None
    data_dir: Path | None


S = TypeVar("S", bound=StartableService)


class ServiceRuntime(Generic[S]):
    """Lazily started job service of one replica (or one test app)."""

    component: ClassVar[str]
    """The migration component of the service's tables (``export``, ``bul``, ...)."""

    def __init__(self, config: DatabaseArgs) -> None:
        shared = StorageSettings()  # storage only: a job service signs no tokens, so the secret is not its concern
        self.data_dir = Path(config.data_dir or shared.blatam_data_dir)
        self.database_url = config.database_url or shared.database_url
        self._database_schema = config.database_schema
        self._shared = shared
        self._db: Database | None = None
        self._service: S | None = None
        self._lock = asyncio.Lock()
        self.runner_id = uuid.uuid4().hex

    def _build(self, db: Database) -> S:
        """The service on the opened database (not started yet)."""
        raise NotImplementedError

    async def service(self) -> S:
        """The started service, opening (and migrating) the database on first call."""
        if self._service is None:
            async with self._lock:
                if self._service is None:
                    kwargs: dict[str, Any] = {
                        "components": [self.component],
                        "data_dir": self.data_dir,
                        "command_timeout_s": self._shared.db_command_timeout_s,
                        "acquire_timeout_s": self._shared.db_acquire_timeout_s,
                    }
                    if self._database_schema:
                        kwargs["schema"] = self._database_schema
                    db = await asyncio.wait_for(open_database(self.database_url, **kwargs), DB_OPEN_TIMEOUT_S)
                    try:
                        service = self._build(db)
                        await service.start()
                    except BaseException:
                        await db.close()
                        raise
                    self._db, self._service = db, service
        return self._service

    async def try_start(self) -> None:
        """Start now if the database answers; otherwise on the first request."""
        try:
            await self.service()
        except (StorageError, TimeoutError, OSError) as exc:
            logger.warning("%s: database not reachable at start (%s); will retry on first request",
                           self.component, exc)

    async def ping(self) -> None:
        """Raise a storage error when the database does not answer."""
        await self.service()
        assert self._db is not None
        await self._db.ping()

    async def close(self) -> None:
        """Stop the service (its unfinished jobs are marked failed), then release the database."""
        if self._service is not None:
            await self._service.close()
        if self._db is not None:
            await self._db.close()
        self._db = self._service = None
