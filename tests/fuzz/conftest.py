"""The whole stack for the fuzz tests: every service behind the gateway, on the session's Serve instance.

The `llm` application serves the demo model (small context and token limits,
so that fuzzed generations stay short), the business services store in a
private PostgreSQL schema, and the gateway knows one user whose API key has
every scope (``*``): the fuzzer gets past authentication to the real handlers.
Deployed once for the package (both fuzz files), deleted after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, wait_app_running
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

SECRET = "fuzz-gateway-test-secret-0123456789-abcdefghij"
LLM_ARGS = {"max_model_len": 4096, "max_batch_size": 8, "max_tokens_limit": 2048, "default_max_tokens": 64,
            "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 64}}
"""The demo model with serve_config.yaml's context and token limit, so that the services' prompts and budgets fit
as in production; prompts over the context and ``max_tokens`` past the limit are answered before any decoding."""
STACK_START_TIMEOUT_S = 300.0
LLM_ROUTE = "/direct/v1"
SERVICES = ("redundancy", "export", "bul", "gamma", "agents", "llm")
"""Services whose routes the gateway documents once they are up."""


@dataclass(frozen=True)
class Stack:
    """Where the gateway and the LLM ingress answer, and the API key of a user with every scope."""

    base_url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    @property
    def llm_url(self) -> str:
        """The LLM ingress itself (in production it has no HTTP route: the gateway serves its OpenAI API)."""
        return f"{self.base_url}{LLM_ROUTE}"


@contextmanager
def deployed_stack(instance: ServeInstance, data_dir: Path) -> Iterator[Stack]:
    """Deploy every application (all at once, then wait for each), seed the user; delete them all after."""
    from ray import serve

    from deployments.agents import build_agents
    from deployments.app_builder import build_gateway
    from deployments.bul import build_bul
    from deployments.export import build_export
    from deployments.gamma import build_gamma
    from deployments.llm import build_llm
    from deployments.redundancy import build_redundancy

    schema = unique_schema("fuzz")
    prefix = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    database = {"database_url": TEST_DATABASE_URL, "database_schema": schema}
    settings = {"blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL,
                "database_schema": schema, "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix,
                "rate_limit_default": "100000/minute", "gateway_request_timeout_s": 60}
    apps = {
        "llm": (build_llm(LLM_ARGS), LLM_ROUTE),  # off the gateway's own /v1 (longest prefix wins), as a test
        "redundancy": (build_redundancy(database), "/redundancy"),
        "export": (build_export({**database, "data_dir": str(data_dir / "export")}), "/export"),
        "bul": (build_bul({**database, "data_dir": str(data_dir / "bul"), "settings": {"section_tokens_short": 24}}),
                "/bul"),
        "gamma": (build_gamma({**database, "data_dir": str(data_dir / "gamma")}), "/gamma"),
        "agents": (build_agents({**database, "data_dir": str(data_dir / "agents")}), "/agents"),
        "gateway": (build_gateway({"settings": settings}), "/"),
    }
    try:
        serve.run_many([serve.RunTarget(target=app, name=name, route_prefix=route_prefix)
                        for name, (app, route_prefix) in apps.items()], wait_for_applications_running=False)
        for name in apps:  # all seven start at once on 2 CPUs: more than one app's usual budget
            wait_app_running(name, timeout_s=STACK_START_TIMEOUT_S)
        keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET, users={"fuzz": ("acme", "*")}))
        stack = Stack(instance.base_url, keys["fuzz"])
        wait_documented(stack)
        yield stack
    finally:
        for name in apps:
            serve.delete(name, _blocking=False)
        deadline = time.monotonic() + 60
        while set(serve.status().applications) & set(apps) and time.monotonic() < deadline:
            time.sleep(0.5)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


@pytest.fixture(scope="package")
def stack(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with deployed_stack(serve_instance, tmp_path_factory.mktemp("fuzz-data")) as deployed:
        yield deployed


def wait_documented(stack: Stack, timeout_s: float = 120.0) -> None:
    """Until the gateway's /openapi.json documents every service's routes (it reads Serve's status first)."""
    deadline = time.monotonic() + timeout_s
    missing: set[str] = set(SERVICES)
    with httpx.Client(base_url=stack.base_url, timeout=30.0) as client:
        while missing and time.monotonic() < deadline:
            paths = client.get("/openapi.json").json()["paths"]
            missing = {name for name in SERVICES if not any(p.startswith(f"/api/v1/{name}/") for p in paths)}
            if missing:
                time.sleep(1.0)
    assert not missing, f"the gateway does not document {sorted(missing)} after {timeout_s:g} s"


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    """A client of the gateway that sends the API key."""
    with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=60.0) as client:
        yield client
