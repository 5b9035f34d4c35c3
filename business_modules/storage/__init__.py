"""Storage: one async `Database` API over PostgreSQL (asyncpg) and SQLite (aiosqlite).

Domain modules declare their tables as versioned migrations under their own
component name and use named ``:param`` SQL that runs on both backends::

    from business_modules.storage import Database, Migration, StorageSettings, open_database, register_migrations

    register_migrations("redundancy", [Migration(1, "corpora", "CREATE TABLE ...")])
    db = await open_database(StorageSettings().database_url)
    rows = await db.fetch_all("SELECT * FROM redundancy_corpora WHERE tenant = :tenant", {"tenant": t})
    async with db.transaction():
        ...

Portable SQL: TEXT, INTEGER, BIGINT, DOUBLE PRECISION; timestamps as ISO-8601
TEXT or DOUBLE epoch seconds; JSON as TEXT; binary via a per-dialect dict
(BYTEA vs BLOB). Prefix tables with the component (``auth_users``).
"""

from business_modules.storage.base import Database
from business_modules.storage.errors import (
    IntegrityError,
    MigrationError,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
    UnstorableValueError,
)
from business_modules.storage.factory import default_sqlite_path, open_database
from business_modules.settings import StorageSettings
from business_modules.storage.migrations import Migration, MigrationRegistry, register_migrations, registered

__all__ = [
    "Database",
    "IntegrityError",
    "Migration",
    "MigrationError",
    "MigrationRegistry",
    "StorageError",
    "StorageTimeoutError",
    "StorageUnavailableError",
    "UnstorableValueError",
    "StorageSettings",
    "default_sqlite_path",
    "open_database",
    "register_migrations",
    "registered",
]
