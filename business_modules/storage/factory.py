"""`open_database(url)`: pick the backend from the URL and apply migrations."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from business_modules.storage.base import Database
from business_modules.storage.migrations import MigrationRegistry
from business_modules.storage.postgres import PostgresDatabase
from business_modules.settings import StorageSettings
from business_modules.storage.sqlite import SQLiteDatabase

logger = logging.getLogger(__name__)

DEFAULT_SQLITE_FILE = "blatam.db"


def default_sqlite_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<data_dir or $BLATAM_DATA_DIR or ./data>/blatam.db``."""
    base = data_dir if data_dir is not None else StorageSettings().blatam_data_dir
    return Path(base).expanduser() / DEFAULT_SQLITE_FILE


def _sqlite_path(url: str) -> str:
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ValueError(f"SQLite URLs look like sqlite:///relative/path.db or sqlite:////abs/path.db, got {url!r}")
    path = rest[3:]
    if not path:
        raise ValueError(f"SQLite URL without a path: {url!r}")
    return path


async def open_database(
    url: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    schema: str | None = None,
    migrate: bool = True,
    components: Sequence[str] | None = None,
    registry: MigrationRegistry | None = None,
    command_timeout_s: float = 10.0,
    acquire_timeout_s: float = 5.0,
    pool_max_size: int = 10,
) -> Database:
    """Open the database named by `url` and bring its schema up to date.

    Args:
        url: ``postgresql://...`` (asyncpg pool), ``sqlite:///path`` (that file,
            ``sqlite:///:memory:`` for a private in-memory one) or None (the
            embedded file, see `default_sqlite_path`).
        data_dir: folder of the embedded file when `url` is None.
        schema: PostgreSQL only: keep every table in this schema (created when missing).
        migrate: apply registered migrations (all components, or `components`).
        registry: where migrations are registered (default: `register_migrations`'s).
        command_timeout_s: budget of one statement.
        acquire_timeout_s: budget to get a pooled connection (or SQLite's lock).
        pool_max_size: PostgreSQL pool size.

    Raises:
        ValueError: an unsupported URL.
        StorageError: the database cannot be opened or migrated.
    """
    db: Database
    if url is None or url.strip() == "":
        path = default_sqlite_path(data_dir)
        logger.info("DATABASE_URL not set: using the embedded SQLite file %s", path)
        db = await SQLiteDatabase.connect(str(path), command_timeout_s=command_timeout_s, lock_timeout_s=acquire_timeout_s)
    else:
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
            dsn = "postgresql:" + url.split(":", 1)[1]
            db = await PostgresDatabase.connect(
                dsn,
                schema=schema,
                command_timeout_s=command_timeout_s,
                acquire_timeout_s=acquire_timeout_s,
                max_size=pool_max_size,
            )
        elif scheme in ("sqlite", "sqlite+aiosqlite"):
            db = await SQLiteDatabase.connect(
                _sqlite_path(url), command_timeout_s=command_timeout_s, lock_timeout_s=acquire_timeout_s
            )
        else:
            raise ValueError(f"Unsupported database URL scheme {scheme!r}: use postgresql:// or sqlite:///")
    if migrate:
        try:
            await db.migrate(components, registry=registry)
        except BaseException:
            await db.close()
            raise
    return db
