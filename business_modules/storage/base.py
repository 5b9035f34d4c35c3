"""The `Database` interface shared by the PostgreSQL and SQLite backends.

SQL uses named ``:param`` placeholders on both backends; rows come back as
plain dicts. A transaction binds a connection to the current asyncio task
(through a context variable), so every call made inside ``async with
db.transaction():`` runs on that connection and commits or rolls back together.
Nested ``transaction()`` blocks become savepoints. Do not share one
transaction between concurrently running tasks.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from business_modules.storage.errors import MigrationError
from business_modules.storage.migrations import (
    DEFAULT_REGISTRY,
    MIGRATIONS_TABLE_SQL,
    Dialect,
    Migration,
    MigrationRegistry,
)

logger = logging.getLogger(__name__)

Params = Mapping[str, Any]


class Database(ABC):
    """An open database: statements, transactions, migrations, health."""

    dialect: Dialect

    @abstractmethod
    async def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; return the number of rows it changed (0 for DDL)."""

    @abstractmethod
    async def execute_many(self, sql: str, params_seq: Sequence[Params]) -> None:
        """Run one statement once per parameter set (in one transaction)."""

    @abstractmethod
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[dict[str, Any]]:
        """Rows of a query as dicts."""

    async def fetch_one(self, sql: str, params: Params | None = None) -> dict[str, Any] | None:
        """The first row of a query, or None."""
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_value(self, sql: str, params: Params | None = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = await self.fetch_one(sql, params)
        return None if row is None else next(iter(row.values()))

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """All-or-nothing block; nested blocks are savepoints."""

    @abstractmethod
    async def ping(self, timeout_s: float = 2.0) -> None:
        """Round-trip ``SELECT 1``; raise a `StorageError` subclass when it fails."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the object is unusable afterwards."""

    @abstractmethod
    def _migration_lock(self) -> AbstractAsyncContextManager[None]:
        """A transaction that also serialises migration runs across processes."""

    async def migrate(
        self, components: Sequence[str] | None = None, *, registry: MigrationRegistry | None = None
    ) -> list[tuple[str, int]]:
        """Apply pending registered migrations; return the (component, version) pairs applied.

        Args:
            components: only these components (default: every registered one).
            registry: where migrations are registered (default: the module's).

        Raises:
            MigrationError: an applied version has another name than the
                registered one, or a migration's SQL failed (nothing of this
                run is kept).
        """
        plan = (registry or DEFAULT_REGISTRY).plan(components)
        applied_now: list[tuple[str, int]] = []
        async with self._migration_lock():
            await self.execute(MIGRATIONS_TABLE_SQL)
            rows = await self.fetch_all("SELECT component, version, name FROM schema_migrations")
            applied = {(row["component"], int(row["version"])): row["name"] for row in rows}
            for component, migrations in plan.items():
                for migration in migrations:
                    key = (component, migration.version)
                    if key in applied:
                        if applied[key] != migration.name:
                            raise MigrationError(
                                f"{component} migration {migration.version} was applied as "
                                f"{applied[key]!r} but the code registers {migration.name!r}; "
                                "add a new version instead of editing an applied one"
                            )
                        continue
                    await self._apply(component, migration)
                    applied_now.append(key)
        for component, version in applied_now:
            logger.info("Applied migration %s/%d", component, version)
        return applied_now

    async def _apply(self, component: str, migration: Migration) -> None:
        try:
            await self._run_script(migration.script(self.dialect))
        except Exception as exc:  # noqa: BLE001 - re-raised with context, transaction rolls back
            raise MigrationError(
                f"Migration {component}/{migration.version} ({migration.name}) failed: {exc}"
            ) from exc
        await self.execute(
            "INSERT INTO schema_migrations (component, version, name, applied_at)"
            " VALUES (:component, :version, :name, :applied_at)",
            {"component": component, "version": migration.version, "name": migration.name, "applied_at": time.time()},
        )

    @abstractmethod
    async def _run_script(self, script: str) -> None:
        """Run a multi-statement script inside the current transaction."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


