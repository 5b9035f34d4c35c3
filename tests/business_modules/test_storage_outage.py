"""PostgreSQL restarted under load: every failure is a retryable storage error.

The fault drill (tests/faults) saw a 500 when PostgreSQL restarted under
load: asyncpg re-raised its own error from the connection reset on release, and
a connection cut mid-switch raised ``InternalClientError``. Here a throwaway
server is stopped and started while tasks write and read, so those races are
hit in seconds instead of once in a CI run.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from business_modules.storage import StorageTimeoutError, StorageUnavailableError
from business_modules.storage.postgres import PostgresDatabase
from tests.fault_servers import ThrowawayPostgres, missing_servers

pytestmark = pytest.mark.skipif(missing_servers() is not None, reason=str(missing_servers()))

WORKERS = 8
RESTARTS = 2


@pytest.fixture
def server():
    pg = ThrowawayPostgres().create()
    yield pg
    pg.destroy()


async def _load(db: PostgresDatabase, worker: int, stop: asyncio.Event, acked: set[int],
                errors: list[BaseException]) -> None:
    """Writes, reads and transactions in a loop; acknowledged ids go in `acked`."""
    for n in itertools.count():
        if stop.is_set():
            return
        row = worker * 1_000_000 + n
        try:
            if n % 3 == 0:
                async with db.transaction():
                    await db.execute("INSERT INTO outage (id) VALUES (:id)", {"id": row})
                    await db.fetch_all("SELECT count(*) FROM outage")
                acked.add(row)
            elif n % 3 == 1:
                await db.execute("INSERT INTO outage (id) VALUES (:id)", {"id": row})
                acked.add(row)
            else:
                await db.fetch_all("SELECT pg_sleep(0.005), count(*) FROM outage")
        except Exception as exc:  # noqa: BLE001 - judged by the test
            errors.append(exc)
        await asyncio.sleep(0.002)


async def test_restart_under_load_gives_only_retryable_errors_and_keeps_acknowledged_writes(server) -> None:
    db = await PostgresDatabase.connect(server.url, max_size=WORKERS - 2)
    try:
        await db.execute("CREATE TABLE outage (id BIGINT PRIMARY KEY)")
        stop, acked, errors = asyncio.Event(), set(), []
        workers = [asyncio.create_task(_load(db, worker, stop, acked, errors)) for worker in range(WORKERS)]
        for _ in range(RESTARTS):
            await asyncio.sleep(0.7)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
        await asyncio.sleep(0.7)
        stop.set()
        await asyncio.gather(*workers)

        assert errors, "the restarts were not seen at all; the test proves nothing"
        wrong = [exc for exc in errors if not isinstance(exc, (StorageUnavailableError, StorageTimeoutError))]
        assert wrong == [], [f"{type(exc).__name__}: {exc}" for exc in wrong[:5]]
        stored = {row["id"] for row in await db.fetch_all("SELECT id FROM outage")}
        assert acked <= stored
        assert await db.fetch_value("SELECT 1 AS one") == 1
    finally:
        await db.close()
