"""An LLM replica runs as many torch threads as the CPUs it reserves (not Ray's OMP_NUM_THREADS=1 for none)."""

from __future__ import annotations

import logging

import pytest
from ray import serve

from deployments.llm import build_llm
from deployments.llm.threads import choose_threads
from tests.deployments.conftest import SERVE_NUM_CPUS, run_app

SMALL = {"max_model_len": 256, "max_batch_size": 2, "cache": {"enable_distributed": False, "max_memory_mb": 8}}


def test_threads_follow_the_reservation_and_the_setting_wins(caplog: pytest.LogCaptureFixture) -> None:
    assert choose_threads(None, 2.0).threads == 2 and choose_threads(None, 2.0).source == "num_cpus"
    assert choose_threads(None, 3.5).threads == 3  # whole CPUs, as Ray's OMP_NUM_THREADS
    assert choose_threads(None, None).threads is None  # not in a Ray worker: torch's own default
    assert choose_threads(4, 2.0).threads == 4 and choose_threads(4, 2.0).source == "num_threads"
    with caplog.at_level(logging.WARNING, logger="deployments.llm.threads"):
        assert choose_threads(None, 0.0).threads == 1
    assert "reserved 0 CPUs, so torch runs on 1 thread" in caplog.text
    assert choose_threads(None, 2.0).describe() == "set from num_cpus, num_cpus 2"


def replica_stats(app: str) -> dict:
    return serve.get_deployment_handle("LLMServer", app_name=app).get_stats.remote().result(timeout_s=60)


@pytest.mark.parametrize(("num_cpus", "threads"), [(SERVE_NUM_CPUS, SERVE_NUM_CPUS), (0, 1)])
def test_a_deployed_replica_runs_its_cpus_as_torch_threads(serve_instance, num_cpus: int, threads: int) -> None:
    """Measured in the replica's batcher thread, where the model runs (an OpenMP setting is per thread)."""
    app = f"llm-threads-{num_cpus}"
    run_app(build_llm({**SMALL, "num_cpus": num_cpus}), name=app, route_prefix=f"/{app}")
    try:
        stats = replica_stats(app)
        assert stats["num_cpus"] == num_cpus
        assert stats["torch_threads"] == threads
    finally:
        serve.delete(app)
