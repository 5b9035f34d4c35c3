"""Schemathesis against the gateway's OpenAPI (every service's routes, merged) and the LLM ingress's own.

Real HTTP on the test Serve instance, authenticated with a real API key that
has every scope, so generated requests reach the real handlers. For each
documented operation, a fixed seed and a few examples of valid and of invalid
data keep a run short and repeatable. Every response must:

- not be a server error (5xx),
- conform to the schema and content type the API documents for its status,
- arrive before the request timeout (a hang fails the request).

The schemas exist only once the stack runs, so the operations are walked
here with schemathesis' strategies (``APIOperation.as_strategy``) under
Hypothesis, rather than with ``schemathesis.pytest.from_fixture``: its
per-operation subtests write ``Function._nodeid``, which pytest 9.2 no
longer has. All failures of one document are reported together.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.fuzz.conftest import LLM_ROUTE, Stack

pytestmark = [pytest.mark.ray, pytest.mark.fuzz]

SEED = 16
MAX_EXAMPLES = 3
"""Generated cases per operation (valid and invalid data mixed); ~80 operations on the gateway, 2 cores."""
REQUEST_TIMEOUT_S = 60.0
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
SKIPPED_SERVICE_ROUTES = ("/api/v1/llm/",)
"""The gateway's second mount of its OpenAI API: the same app as its ``/v1``, which is fuzzed."""


def load_schema(stack: Stack, path: str, base_url: str) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({"base-url": base_url, "headers": stack.headers,
                                            "request-timeout": REQUEST_TIMEOUT_S})
    return schemathesis.openapi.from_url(f"{stack.base_url}{path}", config=config, timeout=REQUEST_TIMEOUT_S)


def fuzz(schema: schemathesis.BaseSchema, stack: Stack, *, skip: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Run every operation of `schema`; returns (operations run, failures with the request to reproduce)."""
    ran, failures = [], []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the document has an invalid operation: {result.err()}"
        operation = result.ok()
        if operation.path.startswith(skip):
            continue
        strategy = st.one_of(operation.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode)

        @seed(SEED)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False, print_blob=False)
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=stack.headers, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

        ran.append(operation.label)
        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every failing operation is reported
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    return ran, failures


def test_gateway_openapi(stack: Stack) -> None:
    schema = load_schema(stack, "/openapi.json", stack.base_url)
    ran, failures = fuzz(schema, stack, skip=SKIPPED_SERVICE_ROUTES)
    services = {label.split()[1].split("/")[3] for label in ran if label.split()[1].startswith("/api/v1/")}
    assert {"redundancy", "export", "bul", "gamma", "agents", "auth", "gateway"} <= services, ran
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= set(ran), ran  # the gateway's OpenAI API
    assert not failures, "\n\n".join(failures)


def test_llm_openapi(stack: Stack) -> None:
    schema = load_schema(stack, f"{LLM_ROUTE}/openapi.json", stack.llm_url)
    ran, failures = fuzz(schema, stack)
    assert {"POST /completions", "POST /chat/completions", "GET /models/{model}"} <= set(ran), ran
    assert not failures, "\n\n".join(failures)
