"""PostgreSQL backend: an asyncpg pool.

Every statement is bounded by asyncpg's ``command_timeout`` and every pool
checkout by ``acquire_timeout_s``; both surface as `StorageTimeoutError`.
A transaction pins one pooled connection to the current task (context
variable) until it ends. ``schema`` puts all tables in a dedicated schema
(created when missing) through ``search_path``: tests use it to isolate
themselves from each other on a shared server.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from business_modules.storage.base import Database, Params
from business_modules.storage.errors import (
    IntegrityError,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
    UnstorableValueError,
)
from business_modules.storage.sql import compile_named, rows_affected

_log = logging.getLogger(__name__)
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Arbitrary constant: the advisory lock every Blatam process takes to migrate.
_MIGRATION_LOCK_KEY = 0x626C6174616D  # "blatam"

# What a server going away looks like from here. A fast shutdown cuts open
# connections with AdminShutdownError (or mid-statement with
# ConnectionDoesNotExistError), refuses new ones with CannotConnectNowError, and
# a connection cut while asyncpg switched states raises InternalClientError
# ("another operation is in progress"): all were 500s in the fault drill, all
# mean "retry shortly" (503).
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


def _translate(exc: BaseException, what: str) -> StorageError:
    message = f"{what}: {exc}"
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        return IntegrityError(message)
    if isinstance(exc, (asyncpg.exceptions.CharacterNotInRepertoireError,
                        asyncpg.exceptions.UntranslatableCharacterError)):  # e.g. "\u0000" inside a jsonb value
        return UnstorableValueError(f"{what}: text with a NUL character (U+0000) cannot be stored")
    if isinstance(exc, (TimeoutError, asyncpg.exceptions.QueryCanceledError)):
        return StorageTimeoutError(message or what)
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailableError(message)
    return StorageError(message)


_TRANSLATED = (asyncpg.PostgresError, TimeoutError, *_UNAVAILABLE)


class PostgresDatabase(Database):
    """`Database` on a PostgreSQL server through an asyncpg pool."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout_s: float):
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._conn: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
            f"pg_tx_{id(self)}", default=None
        )

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        command_timeout_s: float = 10.0,
        acquire_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresDatabase:
        """Create the pool (and `schema`, when given)."""
        server_settings: dict[str, str] = {"application_name": "blatam"}
        if schema is not None:
            if not _SCHEMA.match(schema):
                raise ValueError(f"Schema name must match {_SCHEMA.pattern}, got {schema!r}")
            try:
                conn = await asyncpg.connect(dsn, timeout=connect_timeout_s, command_timeout=command_timeout_s)
            except _TRANSLATED as exc:
                raise _translate(exc, f"connect to PostgreSQL {_redact(dsn)}") from exc
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            except asyncpg.exceptions.UniqueViolationError:
                pass  # NOTE: another process created it between IF NOT EXISTS and the insert
            except _TRANSLATED as exc:
                raise _translate(exc, f"create schema {schema}") from exc
            finally:
                await conn.close()
            server_settings["search_path"] = schema
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout_s,
                command_timeout=command_timeout_s,
                server_settings=server_settings,
            )
        except _TRANSLATED as exc:
            raise _translate(exc, f"connect to PostgreSQL {_redact(dsn)}") from exc
        return cls(pool, acquire_timeout_s=acquire_timeout_s)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pinned = self._conn.get()
        if pinned is not None:
            yield pinned
            return
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except TimeoutError as exc:
            raise StorageTimeoutError(f"No free database connection within {self._acquire_timeout_s:g} s") from exc
        except _TRANSLATED as exc:
            raise _translate(exc, "acquire connection") from exc
        try:
            yield conn
        finally:
            await self._release(conn)

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Hand `conn` back; a connection the server cut is dropped, not an error.

        asyncpg resets a connection on release and re-raises when the reset
        fails (the server shut down after the statement ran). The statement's
        outcome is already known to the caller, and asyncpg has terminated the
        connection so the pool opens a fresh one: failing the request here would
        turn a committed write into a 500.
        """
        try:
            await self._pool.release(conn)
        except _TRANSLATED as exc:
            _log.info("Dropped a PostgreSQL connection the server closed: %s", exc)

    async def execute(self, sql: str, params: Params | None = None) -> int:
        compiled = compile_named(sql, "$")
        args = compiled.bind(params)
        async with self._connection() as conn:
            try:
                return rows_affected(await conn.execute(compiled.text, *args))
            except _TRANSLATED as exc:
                raise _translate(exc, "execute") from exc

    async def execute_many(self, sql: str, params_seq: Sequence[Params]) -> None:
        compiled = compile_named(sql, "$")
        rows = [compiled.bind(params) for params in params_seq]
        async with self.transaction(), self._connection() as conn:
            try:
                await conn.executemany(compiled.text, rows)
            except _TRANSLATED as exc:
                raise _translate(exc, "execute_many") from exc

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[dict[str, Any]]:
        compiled = compile_named(sql, "$")
        args = compiled.bind(params)
        async with self._connection() as conn:
            try:
                rows = await conn.fetch(compiled.text, *args)
            except _TRANSLATED as exc:
                raise _translate(exc, "fetch") from exc
        return [dict(row) for row in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self._connection() as conn:
            token = self._conn.set(conn)
            try:
                tx = conn.transaction()  # nested on a pinned connection -> a savepoint
                try:
                    await tx.start()
                except _TRANSLATED as exc:
                    raise _translate(exc, "begin") from exc
                try:
                    yield
                except BaseException:
                    try:
                        await tx.rollback()
                    except _TRANSLATED:
                        pass  # NOTE: the original error matters more; a dead connection rolls back anyway
                    raise
                else:
                    try:
                        await tx.commit()
                    except _TRANSLATED as exc:
                        raise _translate(exc, "commit") from exc
            finally:
                self._conn.reset(token)

    @asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        async with self.transaction():
            await self.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            yield

    async def _run_script(self, script: str) -> None:
        async with self._connection() as conn:
            try:
                await conn.execute(script)  # no arguments: asyncpg runs a multi-statement script
            except _TRANSLATED as exc:
                raise _translate(exc, "run script") from exc

    async def ping(self, timeout_s: float = 2.0) -> None:
        try:
            await asyncio.wait_for(self.fetch_all("SELECT 1"), timeout=timeout_s)
        except TimeoutError as exc:
            raise StorageTimeoutError(f"PostgreSQL ping took longer than {timeout_s:g} s") from exc

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=self._acquire_timeout_s)
        except TimeoutError:
            self._pool.terminate()


def _redact(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", dsn)
