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


# The suite runs on two xdist workers, a whole file per worker at a time, in the order below
# (pyproject's addopts: `-n 2 --dist loadfile --no-loadscope-reorder`; `-n 0` runs it in one process).
#: Files that start a Ray cluster of their own in this process. They run before any file can start
#: the session's Serve cluster on the same worker (a process inits Ray once), so they come first.
PRIVATE_RAY_FILES = (
    "tests/cache_actors/test_distributed_cache.py",
    "tests/cache_actors/test_distributed_multinode.py",
    "tests/cache_actors/test_replica_tier.py",
)


def require_no_ray_yet() -> None:
    """For the fixtures of `PRIVATE_RAY_FILES`: fail, never skip, if this process already runs a Ray cluster."""
    import ray

    if ray.is_initialized():
        pytest.fail("another Ray instance is running in this process: this file must run before any that starts "
                    "the session's Serve cluster (tests/conftest.py PRIVATE_RAY_FILES)")


#: Then the files that take minutes (fixed-rate loads, many CLI subprocesses), so that neither worker is left
#: running one alone at the end while the other idles (the five last here took 110-170 s each in CI's
#: `--durations` list on the slower AVX2 host, and had run last by name).
LONG_FILES = (
    "tests/scripts/test_ops_cli.py",
    "tests/deployments/test_soak.py",
    "tests/faults/test_faults.py",
    "tests/scripts/test_bench_serve.py",
    "tests/fuzz/test_hostile_inputs.py",
    "tests/deployments/test_llm_api.py",
    "tests/scripts/test_ray_up.py",
    "tests/scripts/test_bench_quality.py",
    "tests/scripts/test_up.py",
    "tests/scripts/test_bench_peers.py",
    "tests/cache_actors/test_onednn_caches.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put `PRIVATE_RAY_FILES`, then `LONG_FILES`, ahead of the rest (a stable sort: the rest keep their order)."""
    first = {name: rank for rank, name in enumerate(PRIVATE_RAY_FILES + LONG_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::", 1)[0], len(first)))  # node ids are rootdir-relative


@pytest.fixture(scope="session", autouse=True)
def attention_kernel_built() -> None:
    """Build our attention and narrow pointwise kernels (`cache_actors.engine.attention_kernel`,
    `cache_actors.engine.pointwise_kernel`) once, before any test runs.

    On a fresh machine each build takes 30-50 s; every model load after it
    reuses it. Done here, no deployment test spends its start-up timeout compiling.
    """
    import torch

    from cache_actors.engine.attention_kernel import HEAD_DIM, AttentionKernel
    from cache_actors.engine.pointwise_kernel import PointwiseKernels

    AttentionKernel.build(torch.float32, torch.device("cpu"), HEAD_DIM)
    PointwiseKernels.build(torch.float32, torch.device("cpu"))
