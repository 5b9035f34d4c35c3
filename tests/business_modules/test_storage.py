"""Storage: the same behaviour on SQLite and PostgreSQL (the `database` fixture)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from business_modules.storage import (
    Database,
    IntegrityError,
    Migration,
    MigrationError,
    MigrationRegistry,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
    UnstorableValueError,
    open_database,
)
from business_modules.storage.postgres import PostgresDatabase
from business_modules.storage.sql import compile_named, split_statements
from tests.conftest import TEST_DATABASE_URL
from tests.storage_fixtures import BACKENDS, drop_schema, unique_schema

ITEMS = "CREATE TABLE IF NOT EXISTS st_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score DOUBLE PRECISION)"


def make_registry(*migrations: Migration, component: str = "st") -> MigrationRegistry:
    registry = MigrationRegistry()
    registry.register(component, migrations)
    return registry


@pytest.fixture
async def items(database: Database) -> Database:
    await database.execute(ITEMS)
    return database


# -- SQL compilation (pure) -------------------------------------------------


def test_named_params_compile_to_numbered_and_reuse_numbers() -> None:
    compiled = compile_named("SELECT :a, :b, :a WHERE x = 'it:s :not' AND y::text = :b -- :c\n", "$")
    assert compiled.text == "SELECT $1, $2, $1 WHERE x = 'it:s :not' AND y::text = $2 -- :c\n"
    assert compiled.names == ("a", "b")
    assert compiled.bind({"a": 1, "b": 2, "extra": 3}) == [1, 2]
    with pytest.raises(ValueError, match="Missing SQL parameter"):
        compiled.bind({"a": 1})


def test_dollar_quoted_and_comments_are_left_alone() -> None:
    compiled = compile_named("SELECT $q$ :x $q$, /* :y */ :z", "?")
    assert compiled.text == "SELECT $q$ :x $q$, /* :y */ ?1"
    assert compiled.names == ("z",)


def test_split_statements_keeps_semicolons_in_strings() -> None:
    script = "CREATE TABLE a (x TEXT DEFAULT ';');\nINSERT INTO a VALUES ('1;2');  \n"
    assert split_statements(script) == ["CREATE TABLE a (x TEXT DEFAULT ';')", "INSERT INTO a VALUES ('1;2')"]


def test_bad_migrations_are_refused() -> None:
    with pytest.raises(ValueError):
        Migration(0, "zero", "SELECT 1")
    with pytest.raises(ValueError, match="missing"):
        Migration(1, "partial", {"sqlite": "SELECT 1"})
    registry = make_registry(Migration(1, "one", "SELECT 1"))
    registry.register("st", [Migration(1, "one", "SELECT 1")])  # same again: no-op
    with pytest.raises(ValueError, match="different content"):
        registry.register("st", [Migration(1, "one", "SELECT 2")])
    with pytest.raises(ValueError, match="Component name"):
        registry.register("Bad-Name", [])


# -- statements and rows ----------------------------------------------------


async def test_execute_and_fetch_round_trip(items: Database) -> None:
    assert await items.execute("INSERT INTO st_items (id, name, score) VALUES (:id, :name, :score)",
                               {"id": 1, "name": "a", "score": 0.5}) == 1
    await items.execute_many("INSERT INTO st_items (id, name, score) VALUES (:id, :name, :score)",
                             [{"id": 2, "name": "b", "score": 1.5}, {"id": 3, "name": "c", "score": None}])
    rows = await items.fetch_all("SELECT id, name, score FROM st_items ORDER BY id")
    assert rows == [{"id": 1, "name": "a", "score": 0.5}, {"id": 2, "name": "b", "score": 1.5},
                    {"id": 3, "name": "c", "score": None}]
    assert await items.fetch_one("SELECT name FROM st_items WHERE id = :id", {"id": 2}) == {"name": "b"}
    assert await items.fetch_one("SELECT name FROM st_items WHERE id = :id", {"id": 99}) is None
    assert await items.fetch_value("SELECT COUNT(*) AS n FROM st_items") == 3
    assert await items.execute("UPDATE st_items SET score = :s WHERE score IS NOT NULL", {"s": 2.0}) == 2
    with pytest.raises(ValueError, match="Missing SQL parameter"):
        await items.fetch_all("SELECT * FROM st_items WHERE id = :id", {})


async def test_unique_violation_is_an_integrity_error(items: Database) -> None:
    await items.execute("INSERT INTO st_items (id, name) VALUES (1, 'a')")
    with pytest.raises(IntegrityError):
        await items.execute("INSERT INTO st_items (id, name) VALUES (2, 'a')")
    assert await items.fetch_value("SELECT COUNT(*) FROM st_items") == 1


async def test_text_with_a_nul_and_integers_past_64_bits_are_refused_alike_on_both_backends(items: Database) -> None:
    """PostgreSQL cannot store U+0000 in text; SQLite could, but both refuse it, as the caller's error (tests/fuzz).
    An integer past 64 bits was a driver error on both (a 503 for ``?offset=2**63``)."""
    for statement in ("INSERT INTO st_items (id, name) VALUES (1, :name)", "SELECT id FROM st_items WHERE name = :name"):
        with pytest.raises(UnstorableValueError, match="name: text with a NUL"):
            await items.execute(statement, {"name": "a\x00b"})
    for big in (2**63, -(2**63) - 1, 2**70):
        with pytest.raises(UnstorableValueError, match="does not fit in a 64-bit integer"):
            await items.fetch_all("SELECT id FROM st_items ORDER BY id LIMIT 10 OFFSET :offset", {"offset": big})
    assert await items.fetch_all("SELECT id FROM st_items LIMIT 10 OFFSET :offset", {"offset": 2**63 - 1}) == []
    assert issubclass(UnstorableValueError, StorageError) and issubclass(UnstorableValueError, ValueError)
    await items.execute("INSERT INTO st_items (id, name) VALUES (1, :name)", {"name": "a\\u0000b"})  # no NUL: kept
    assert await items.fetch_value("SELECT name FROM st_items") == "a\\u0000b"
    if isinstance(items, PostgresDatabase):  # the escape is refused inside jsonb, by the server: translated alike
        with pytest.raises(UnstorableValueError, match="text with a NUL"):
            await items.fetch_value("SELECT CAST(:doc AS jsonb)", {"doc": '{"a": "\\u0000"}'})


async def test_transaction_is_all_or_nothing(items: Database) -> None:
    with pytest.raises(IntegrityError):
        async with items.transaction():
            await items.execute("INSERT INTO st_items (id, name) VALUES (1, 'a')")
            await items.execute("INSERT INTO st_items (id, name) VALUES (2, 'a')")
    assert await items.fetch_value("SELECT COUNT(*) FROM st_items") == 0
    async with items.transaction():
        await items.execute("INSERT INTO st_items (id, name) VALUES (1, 'a')")
        await items.execute("INSERT INTO st_items (id, name) VALUES (2, 'b')")
    assert await items.fetch_value("SELECT COUNT(*) FROM st_items") == 2


async def test_execute_many_is_all_or_nothing(items: Database) -> None:
    with pytest.raises(IntegrityError):
        await items.execute_many("INSERT INTO st_items (id, name) VALUES (:id, :name)",
                                 [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}])
    assert await items.fetch_value("SELECT COUNT(*) FROM st_items") == 0


async def test_nested_transaction_is_a_savepoint(items: Database) -> None:
    async with items.transaction():
        await items.execute("INSERT INTO st_items (id, name) VALUES (1, 'outer')")
        with pytest.raises(RuntimeError):
            async with items.transaction():
                await items.execute("INSERT INTO st_items (id, name) VALUES (2, 'inner')")
                raise RuntimeError("undo the inner block only")
    assert await items.fetch_all("SELECT name FROM st_items") == [{"name": "outer"}]


async def test_other_tasks_do_not_see_uncommitted_rows(items: Database) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        async with items.transaction():
            await items.execute("INSERT INTO st_items (id, name) VALUES (1, 'a')")
            inside.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await inside.wait()
    reader = asyncio.create_task(items.fetch_value("SELECT COUNT(*) FROM st_items"))
    await asyncio.sleep(0.1)
    release.set()
    await task
    # SQLite serialises the reader behind the transaction; PostgreSQL reads the committed snapshot.
    assert await reader == (1 if items.dialect == "sqlite" else 0)
    assert await items.fetch_value("SELECT COUNT(*) FROM st_items") == 1


async def test_ping(database: Database) -> None:
    await database.ping()


# -- migrations ---------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def url_and_schema(request: pytest.FixtureRequest, tmp_path: Path):
    """A database location to open several times (migrations across restarts)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mig.db'}", None
        return
    schema = unique_schema("mig")
    yield TEST_DATABASE_URL, schema
    await drop_schema(TEST_DATABASE_URL, schema)


async def _open(location, registry: MigrationRegistry, **kwargs) -> Database:
    url, schema = location
    return await open_database(url, schema=schema, registry=registry, **kwargs)


async def test_migrations_apply_once_and_new_versions_later(url_and_schema) -> None:
    v1 = Migration(1, "items", ITEMS)
    db = await _open(url_and_schema, make_registry(v1))
    await db.execute("INSERT INTO st_items (id, name) VALUES (1, 'kept')")
    await db.close()

    registry = make_registry(v1, Migration(2, "tags", {
        "postgresql": "CREATE TABLE st_tags (id BIGSERIAL PRIMARY KEY, blob BYTEA); ALTER TABLE st_items ADD COLUMN tag TEXT",
        "sqlite": "CREATE TABLE st_tags (id INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB); ALTER TABLE st_items ADD COLUMN tag TEXT",
    }))
    db = await _open(url_and_schema, registry)
    try:
        assert await db.fetch_all("SELECT id, name, tag FROM st_items") == [{"id": 1, "name": "kept", "tag": None}]
        await db.execute("INSERT INTO st_tags (blob) VALUES (:b)", {"b": b"\x00\xff"})
        assert await db.fetch_value("SELECT blob FROM st_tags") == b"\x00\xff"
        applied = await db.fetch_all("SELECT component, version, name FROM schema_migrations ORDER BY version")
        assert applied == [{"component": "st", "version": 1, "name": "items"},
                           {"component": "st", "version": 2, "name": "tags"}]
        assert await db.migrate(registry=registry) == []
    finally:
        await db.close()


async def test_failed_migration_leaves_nothing_behind(url_and_schema) -> None:
    registry = make_registry(Migration(1, "items", ITEMS),
                             Migration(2, "broken", "CREATE TABLE st_ok (x INTEGER); CREATE TABLE st_bad (x NOT_A_TYPE("))
    with pytest.raises(MigrationError, match="st/2"):
        await _open(url_and_schema, registry)
    db = await _open(url_and_schema, MigrationRegistry(), migrate=False)
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT, version INTEGER,"
                         " name TEXT, applied_at DOUBLE PRECISION)")
        assert await db.fetch_all("SELECT * FROM schema_migrations") == []
        with pytest.raises(StorageError):  # the table of the failed run was rolled back too
            await db.fetch_all("SELECT * FROM st_items")
    finally:
        await db.close()


async def test_edited_applied_migration_is_refused(url_and_schema) -> None:
    db = await _open(url_and_schema, make_registry(Migration(1, "items", ITEMS)))
    await db.close()
    with pytest.raises(MigrationError, match="was applied as 'items'"):
        await _open(url_and_schema, make_registry(Migration(1, "renamed", ITEMS)))


async def test_concurrent_starts_apply_each_migration_once(url_and_schema) -> None:
    registry = make_registry(Migration(1, "items", ITEMS),
                             Migration(2, "seed", "INSERT INTO st_items (id, name) VALUES (1, 'seed')"))
    dbs = await asyncio.gather(*(_open(url_and_schema, registry) for _ in range(3)))
    try:
        assert await dbs[0].fetch_value("SELECT COUNT(*) FROM st_items") == 1
        assert await dbs[0].fetch_value("SELECT COUNT(*) FROM schema_migrations") == 2
    finally:
        for db in dbs:
            await db.close()


# -- time budgets and failures ----------------------------------------------


async def test_slow_statement_times_out_and_database_stays_usable(url_and_schema) -> None:
    db = await _open(url_and_schema, MigrationRegistry(), command_timeout_s=0.3)
    slow = ("SELECT pg_sleep(3)" if db.dialect == "postgresql" else
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) SELECT SUM(i) FROM n")
    try:
        with pytest.raises(StorageTimeoutError):
            await db.fetch_all(slow)
        assert await db.fetch_value("SELECT 1 AS one") == 1
    finally:
        await db.close()


async def test_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageUnavailableError):
        await open_database(f"postgresql://postgres@127.0.0.1:{port}/test", registry=MigrationRegistry())


async def test_default_location_is_an_embedded_file(tmp_path: Path) -> None:
    db = await open_database(None, data_dir=tmp_path / "data", registry=MigrationRegistry())
    try:
        assert db.dialect == "sqlite"
        assert (tmp_path / "data" / "blatam.db").exists()
    finally:
        await db.close()


async def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="Unsupported database URL"):
        await open_database("mysql://x/y")
    with pytest.raises(ValueError, match="SQLite URLs"):
        await open_database("sqlite://relative.db")
