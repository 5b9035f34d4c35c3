"""A replica's own log lines reach its Serve log file (logs/serve/replica_*.log), where operators read them.

Our modules log on ``getLogger(__name__)``; Serve's handlers sit on the
``ray.serve`` logger only, so before `cache_actors.actors.worker_logs` a backend
failure's traceback went to the worker's stderr file and nowhere an operator
looks for a replica's errors.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from ray import serve

from deployments.llm.app import LLMIngress
from tests.deployments.conftest import ray_logs_dir, run_app

APP = "logs-llm"
MARKER = f"backend-exploded-{uuid.uuid4().hex[:8]}"


@serve.deployment(name="ExplodingServer", ray_actor_options={"num_cpus": 0})
class ExplodingServer:
    """An LLM backend whose every call fails with an error no status maps (the ingress answers 500)."""

    async def generate_events(self, request: Any) -> list:
        raise RuntimeError(MARKER)

    async def generate_stream(self, request: Any):  # noqa: ANN201 - a Serve streaming method
        raise RuntimeError(MARKER)
        yield  # an async generator, as the real one


@pytest.fixture(scope="module")
def llm_over_exploding(serve_instance):
    run_app(LLMIngress.bind(ExplodingServer.bind(), {}), name=APP, route_prefix="/logs-llm/v1")
    yield f"{serve_instance.base_url}/logs-llm/v1"
    serve.delete(APP)


def _ingress_log_with(text: str, timeout_s: float = 30.0) -> str | None:
    """The LLMIngress replica log of this app that contains ``text`` (Serve flushes its file handler lazily)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in (ray_logs_dir() / "serve").glob(f"replica_{APP}_LLMIngress_*.log"):
            content = path.read_text(errors="replace")
            if text in content:
                return content
        time.sleep(0.5)
    return None


def test_a_backend_failure_is_a_500_and_its_traceback_is_in_the_ingress_replica_log(llm_over_exploding) -> None:
    with httpx.Client(base_url=llm_over_exploding, timeout=60.0) as http:
        models = http.get("/models")
        assert models.status_code == 200, models.text
        model = models.json()["data"][0]["id"]
        whole = http.post("/completions", json={"model": model, "prompt": "hello", "max_tokens": 2})
        streamed = http.post("/completions", json={"model": model, "prompt": "hello", "max_tokens": 2, "stream": True})
    assert whole.status_code == 500 and whole.json()["error"]["code"] == "backend_error", whole.text
    assert MARKER not in whole.text  # the client learns nothing of the server's insides
    assert streamed.status_code in (200, 500), streamed.text
    assert "backend_error" in streamed.text and MARKER not in streamed.text
    log = _ingress_log_with("The LLM backend failed")
    assert log is not None, "the ingress replica's log file never got the backend failure"
    assert MARKER in log and "Traceback" in log  # the cause, with its traceback, for the operator
