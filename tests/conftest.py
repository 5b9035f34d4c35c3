"""Shared fixtures. Service tests use the real PostgreSQL and Redis named by
TEST_DATABASE_URL / TEST_REDIS_URL (defaults: the local servers)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# `database`: a fresh migrated storage Database per test, on SQLite and PostgreSQL.
from tests.storage_fixtures import database  # noqa: E402,F401

# `tiny_index` (a package index on disk serving a tiny GGUF model) and `smollm2_path` (the real model, pulled once).
from tests.model_fixtures import smollm2_path, tiny_index  # noqa: E402,F401


@pytest.fixture(scope="session")
def serve_instance():
    """One local Ray + Serve instance for the whole session (tests/deployments/conftest.py `serve_instance_session`)."""
    from tests.deployments.conftest import serve_instance_session

    yield from serve_instance_session()
