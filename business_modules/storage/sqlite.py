"""SQLite backend: one aiosqlite connection per process, WAL journal.

Why one connection: SQLite allows a single writer, so statements of this
process are serialised by an asyncio lock (a transaction holds it to its end);
other processes (more Serve replicas on the same file) are serialised by
SQLite's own file lock, waited for up to ``busy_timeout``. Transactions start
with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade.
Each statement is bounded by ``command_timeout_s``; on timeout the statement
is interrupted (``sqlite3_interrupt``) and `StorageTimeoutError` is raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from business_modules.storage.base import Database, Params
from business_modules.storage.errors import (
    IntegrityError,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
)
from business_modules.storage.sql import compile_named, split_statements

T = TypeVar("T")


def _translate(exc: sqlite3.Error, what: str) -> StorageError:
    message = f"{what}: {exc}"
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(message)
    text = str(exc).lower()
    if "locked" in text or "busy" in text or "interrupted" in text:
        return StorageTimeoutError(message)
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        return StorageUnavailableError(message)
    return StorageError(message)


class SQLiteDatabase(Database):
    """`Database` on an embedded SQLite file (or ``:memory:``)."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, *, path: str, command_timeout_s: float, lock_timeout_s: float):
        self._conn = conn
        self.path = path
        self._command_timeout_s = command_timeout_s
        self._lock_timeout_s = lock_timeout_s
        self._lock = asyncio.Lock()
        self._depth: contextvars.ContextVar[int] = contextvars.ContextVar(f"sqlite_tx_{id(self)}", default=0)
        self._savepoints = itertools.count(1)
        self._closed = False

    @classmethod
    async def connect(
        cls, path: str, *, command_timeout_s: float = 10.0, lock_timeout_s: float = 5.0
    ) -> SQLiteDatabase:
        """Open (creating parent folders) and configure the file at `path`."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await asyncio.wait_for(
                aiosqlite.connect(path, isolation_level=None, timeout=lock_timeout_s), timeout=command_timeout_s
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageUnavailableError(f"Cannot open SQLite database {path}: {exc}") from exc
        except TimeoutError as exc:
            raise StorageTimeoutError(f"Opening SQLite database {path} timed out") from exc
        conn.row_factory = sqlite3.Row
        db = cls(conn, path=path, command_timeout_s=command_timeout_s, lock_timeout_s=lock_timeout_s)
        try:
            await db._switch_to_wal()
            for pragma in (
                f"PRAGMA busy_timeout={int(lock_timeout_s * 1000)}",
                "PRAGMA foreign_keys=ON",
                "PRAGMA synchronous=NORMAL",
            ):
                await db._call(lambda p=pragma: conn.execute(p), "pragma")
        except BaseException:
            await conn.close()
            raise
        return db

    async def _switch_to_wal(self) -> None:
        """``journal_mode=WAL``, retried: SQLite answers "locked" at once (no busy wait) while
        another connection opening the same file holds its lock, e.g. replicas starting together."""
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                await self._call(lambda: self._conn.execute("PRAGMA journal_mode=WAL"), "pragma")
                return
            except StorageTimeoutError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    # -- plumbing -----------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Run one driver call with the statement time budget and error translation."""
        if self._closed:
            raise StorageUnavailableError("Database is closed")
        try:
            return await asyncio.wait_for(fn(), timeout=self._command_timeout_s)
        except TimeoutError as exc:
            await self._conn.interrupt()
            raise StorageTimeoutError(f"{what} took longer than {self._command_timeout_s:g} s") from exc
        except sqlite3.Error as exc:
            raise _translate(exc, what) from exc
        except ValueError as exc:  # aiosqlite raises ValueError when its connection is closed
            raise StorageUnavailableError(f"{what}: {exc}") from exc

    @asynccontextmanager
    async def _serialised(self) -> AsyncIterator[None]:
        """Hold the process lock unless this task already holds it through a transaction."""
        if self._depth.get() > 0:
            yield
            return
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout=self._lock_timeout_s)
        except TimeoutError as exc:
            raise StorageTimeoutError(f"Waited more than {self._lock_timeout_s:g} s for the database") from exc
        try:
            yield
        finally:
            self._lock.release()

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def _exec(self, sql: str, args: Sequence[Any]) -> int:
        async with self._conn.execute(sql, args) as cursor:
            return cursor.rowcount if cursor.rowcount is not None and cursor.rowcount >= 0 else 0

    # -- Database API -------------------------------------------------------

    async def execute(self, sql: str, params: Params | None = None) -> int:
        compiled = compile_named(sql, "?")
        args = compiled.bind(params)
        async with self._serialised():
            return await self._call(lambda: self._exec(compiled.text, args), "execute")

    async def execute_many(self, sql: str, params_seq: Sequence[Params]) -> None:
        compiled = compile_named(sql, "?")
        rows = [compiled.bind(params) for params in params_seq]
        async with self.transaction():
            await self._call(lambda: self._conn.executemany(compiled.text, rows), "execute_many")

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[dict[str, Any]]:
        compiled = compile_named(sql, "?")
        args = compiled.bind(params)
        async with self._serialised():
            rows = await self._call(lambda: self._fetch(compiled.text, args), "fetch")
        return [dict(row) for row in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        depth = self._depth.get()
        if depth == 0:
            async with self._serialised():
                await self._call(lambda: self._conn.execute("BEGIN IMMEDIATE"), "begin")
                token = self._depth.set(1)
                try:
                    yield
                except BaseException:
                    await self._rollback("ROLLBACK")
                    raise
                else:
                    await self._call(lambda: self._conn.execute("COMMIT"), "commit")
                finally:
                    self._depth.reset(token)
            return
        name = f"sp_{next(self._savepoints)}"
        await self._call(lambda: self._conn.execute(f"SAVEPOINT {name}"), "savepoint")
        token = self._depth.set(depth + 1)
        try:
            yield
        except BaseException:
            await self._rollback(f"ROLLBACK TO SAVEPOINT {name}")
            await self._call(lambda: self._conn.execute(f"RELEASE SAVEPOINT {name}"), "release")
            raise
        else:
            await self._call(lambda: self._conn.execute(f"RELEASE SAVEPOINT {name}"), "release")
        finally:
            self._depth.reset(token)

    async def _rollback(self, statement: str) -> None:
        # NOTE: a rollback must not hide the error that caused it; if the
        # rollback itself fails (connection gone) SQLite discards the
        # transaction anyway when the connection closes.
        try:
            await self._call(lambda: self._conn.execute(statement), "rollback")
        except StorageError:
            pass

    def _migration_lock(self):  # type: ignore[override]
        return self.transaction()

    async def _run_script(self, script: str) -> None:
        for statement in split_statements(script):
            await self._call(lambda s=statement: self._exec(s, ()), "migration")

    async def ping(self, timeout_s: float = 2.0) -> None:
        async def probe() -> None:
            async with self._serialised():
                await self._call(lambda: self._fetch("SELECT 1", ()), "ping")

        try:
            await asyncio.wait_for(probe(), timeout=timeout_s)
        except TimeoutError as exc:
            raise StorageTimeoutError(f"SQLite ping took longer than {timeout_s:g} s") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._conn.close()
