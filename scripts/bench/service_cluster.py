"""A private Ray + Serve with the gateway, for benchmarks that drive services through it with an API key.

Shared by `blatam bench services` (BUL) and `blatam bench agents`: local Ray
on 2 CPUs, Serve on a free port, the embedded SQLite in a temporary folder,
one user and API key created straight in the database.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.bench.ports import free_loopback_port


async def create_api_key(data_dir: Path, scopes: str) -> str:
    """An API key of tenant ``bench`` with ``scopes``, in the embedded database under ``data_dir``."""
    from business_modules.auth import AuthService
    from business_modules.auth import repository as _auth_repository  # noqa: F401
    from business_modules.storage import open_database

    db = await open_database(None, data_dir=data_dir, components=["auth"])
    try:
        auth = AuthService(db, secret_key="bench-only-secret-" + "x" * 32, token_ttl_s=3600)
        await auth.create_user(username="bench", password="bench-password", scopes=scopes, tenant="bench")
        return (await auth.create_api_key(username="bench", name="bench")).secret
    finally:
        await db.close()


@contextmanager
def local_cluster(data_dir: Path, *, scopes: str, rate_limits: dict[str, str]) -> Iterator[tuple[str, str]]:
    """A private Ray + Serve with the gateway; yields ``(base_url, api_key)`` and stops it all after."""
    import ray
    from ray import serve

    from deployments.app_builder import build_gateway
    from scripts.serve_stop import stop_serve

    os.environ["BLATAM_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    api_key = asyncio.run(create_api_key(data_dir, scopes))
    port = free_loopback_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_gateway({"settings": {"blatam_env": "development", "rate_limits": rate_limits,
                                                "gateway_request_timeout_s": 120}}),
                  name="gateway", route_prefix="/")
        yield f"http://127.0.0.1:{port}", api_key
    finally:
        try:
            stop_serve()
        finally:
            ray.shutdown()


def wait_routed(http: Any, service: str, key: dict[str, str], timeout_s: float = 120.0) -> None:
    """Until the gateway routes to ``service``'s new app (its view of Serve is refreshed every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = http.get(f"/api/v1/{service}/health", headers=key)
        if response.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service} is not reachable through the gateway: {response.status_code} "
                               f"{response.text[:300]}")
        time.sleep(0.5)
