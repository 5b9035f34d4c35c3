"""The `database` fixture: one fresh, migrated `Database` per test on each backend.

Imported by tests/conftest.py so every test module can ask for `database`.
PostgreSQL (TEST_DATABASE_URL) gets a private schema per test, dropped after
it, so engineers running tests in parallel never see each other's rows; SQLite
gets a file in the test's tmp_path. Migrations registered at the time the
fixture runs (i.e. by modules your test imported) are applied.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from business_modules.storage import Database, open_database

BACKENDS = ("sqlite", "postgresql")


def unique_schema(prefix: str = "t") -> str:
    """A PostgreSQL schema name no other test run uses."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


async def drop_schema(database_url: str, schema: str) -> None:
    """Drop `schema` and everything in it (test clean-up)."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def open_test_database(backend: str, tmp_path: Path, database_url: str) -> tuple[Database, str | None]:
    """A migrated database on `backend`; returns it and the PostgreSQL schema to drop (or None)."""
    if backend == "sqlite":
        return await open_database(f"sqlite:///{tmp_path / 'test.db'}"), None
    schema = unique_schema()
    try:
        return await open_database(database_url, schema=schema), schema
    except BaseException:
        await drop_schema(database_url, schema)
        raise


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh migrated `Database`, once on SQLite and once on PostgreSQL."""
    from tests.conftest import TEST_DATABASE_URL

    db, schema = await open_test_database(request.param, tmp_path, TEST_DATABASE_URL)
    try:
        yield db
    finally:
        await db.close()
        if schema is not None:
            await drop_schema(TEST_DATABASE_URL, schema)


async def seed_api_keys(url: str, schema: str, *, secret: str, users: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Create users ``{username: (tenant, scopes)}`` in the gateway's auth tables; returns ``{username: API key}``."""
    from business_modules.auth import AuthService
    from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
    from business_modules.storage import open_database

    db = await open_database(url, schema=schema)
    try:
        auth = AuthService(db, secret_key=secret, token_ttl_s=1800)
        keys = {}
        for username, (tenant, scopes) in users.items():
            await auth.create_user(username=username, password="correct horse battery", scopes=scopes, tenant=tenant)
            keys[username] = (await auth.create_api_key(username=username, name="k")).secret
        return keys
    finally:
        await db.close()


def drop_redis_keys(redis_url: str, prefix: str) -> None:
    """Delete the keys a test wrote under ``prefix`` (e.g. its rate-limit counters)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        found = list(client.scan_iter(match=f"{prefix}*"))
        if found:
            client.delete(*found)
    finally:
        client.close()
