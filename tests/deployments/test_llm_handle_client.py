"""`LLMHandleClient` (the business services' LLM client) against the real `llm` app on the demo model."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
from ray import serve

from business_modules.llm_client import LLMError, LLMRequestSpec, LLMTimeout, LLMUnavailable
from deployments.common.llm_handle import LLMHandleClient
from deployments.llm import build_llm
from tests.deployments.conftest import run_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "llm-client-test"
ARGS = {"max_model_len": 512, "max_batch_size": 4, "max_tokens_limit": 256,
        "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 16}}
SYSTEM = "You write business documents. Fixed instructions shared by every section. " * 3


@pytest.fixture(scope="module")
def client(serve_instance) -> Iterator[LLMHandleClient]:
    run_app(build_llm(ARGS), name=APP, route_prefix=f"/{APP}")
    yield LLMHandleClient(app_name=APP)
    serve.delete(APP)


def ask(section: str, tenant: str, **extra) -> LLMRequestSpec:
    return LLMRequestSpec(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": section}],
                          max_tokens=8, tenant_id=tenant, **extra)


def test_generate_reports_usage_and_reuses_the_shared_prefix_per_tenant(client: LLMHandleClient) -> None:
    # Tenants of this test only: the shards are shared by every llm app of the session, and another
    # module's "globex" may have cached a block that starts like this prompt (BUL's "You write busi...").
    mine, theirs = f"acme-{uuid.uuid4().hex[:8]}", f"globex-{uuid.uuid4().hex[:8]}"

    async def run():
        first = await client.generate(ask("Section one.", mine))
        second = await client.generate(ask("Section two.", mine))
        other = await client.generate(ask("Section two.", theirs))
        return first, second, other

    first, second, other = asyncio.run(run())
    assert first.usage.prompt_tokens > 32 and first.usage.completion_tokens >= 1
    assert second.usage.cached_tokens >= 32  # the system prompt's blocks
    assert other.usage.cached_tokens == 0  # another tenant never shares KV
    assert other.text == second.text and second.latency_ms > 0


def test_stream_deltas_add_up_to_the_text(client: LLMHandleClient) -> None:
    async def run():
        deltas, done = [], None
        async for event in client.stream(ask("Stream it.", "acme")):
            if event.done is not None:
                done = event.done
            else:
                deltas.append(event.delta)
        return deltas, done

    deltas, done = asyncio.run(run())
    assert done is not None and "".join(deltas) == done.text


def test_json_schema_answers_validate(client: LLMHandleClient) -> None:
    schema = {"type": "object", "properties": {"sections": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                                            "minItems": 2, "maxItems": 4}},
              "required": ["sections"], "additionalProperties": False}
    spec = LLMRequestSpec(messages=[{"role": "user", "content": "An outline."}], max_tokens=200, json_schema=schema,
                          tenant_id="acme")
    result = asyncio.run(client.generate(spec))
    jsonschema.validate(json.loads(result.text), schema)


def test_timeout_unavailable_and_refusal_are_clear_errors(client: LLMHandleClient) -> None:
    with pytest.raises(LLMTimeout, match="did not finish within"):
        asyncio.run(client.generate(LLMRequestSpec(prompt="x" * 200, max_tokens=200, timeout_s=0.05)))
    with pytest.raises(LLMError, match="refused") as refused:
        asyncio.run(client.generate(LLMRequestSpec(prompt="x" * 2000, max_tokens=8)))  # over max_model_len
    # the replica's reason, not the text of Ray's task error (its traceback, pid and actor id: found by tests/fuzz)
    assert "context" in str(refused.value) and "ServeReplica" not in str(refused.value), str(refused.value)
    with pytest.raises(LLMUnavailable):
        asyncio.run(LLMHandleClient(app_name="no-such-llm-app").generate(LLMRequestSpec(prompt="hi", timeout_s=10)))


@pytest.mark.parametrize("as_messages", [False, True])
def test_a_request_over_grpcs_4_mib_is_refused_by_the_replica_not_lost_on_the_wire(client: LLMHandleClient,
                                                                                    as_messages: bool) -> None:
    # Small requests go by value over the replica's gRPC server, whose default cap (this test app does not
    # raise it) is 4 MiB: a larger one must go by actor call and get the replica's own answer.
    text = "word " * 1_100_000
    spec = (LLMRequestSpec(messages=[{"role": "user", "content": text}], max_tokens=4) if as_messages
            else LLMRequestSpec(prompt=text, max_tokens=4))
    with pytest.raises(LLMError, match="refused") as refused:
        asyncio.run(client.generate(spec))
    assert not isinstance(refused.value, LLMUnavailable) and "context" in str(refused.value), str(refused.value)
