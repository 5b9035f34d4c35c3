"""Domain errors of the storage layer.

Both backends translate their driver exceptions (asyncpg, sqlite3) into these,
so callers (repositories, the gateway's error mapping) never depend on which
database is underneath.
"""

from __future__ import annotations


class StorageError(Exception):
    """A database operation failed (the message names the statement kind)."""


class IntegrityError(StorageError):
    """A constraint was violated (unique key, foreign key, NOT NULL, CHECK).

    Repositories usually translate this into a domain error such as
    "user already exists".
    """


class UnstorableValueError(StorageError, ValueError):
    """A value no backend stores: text with a NUL character (U+0000), which PostgreSQL refuses in ``text`` and
    ``jsonb``, or an integer outside 64 bits (PostgreSQL's bigint, SQLite's INTEGER). Refused on every backend
    before the statement runs, so SQLite and PostgreSQL answer alike; the caller sent it (a 4xx), the database is
    fine."""


class StorageTimeoutError(StorageError):
    """A statement, a lock or a pool slot took longer than its time budget."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached (connection refused, closed, lost)."""


class MigrationError(StorageError):
    """Registered migrations disagree with the ones already applied, or one failed."""
