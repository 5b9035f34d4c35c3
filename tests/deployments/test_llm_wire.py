"""`wire_bytes_bound`: never below what a request weighs pickled, whatever it carries (no Serve needed)."""

from __future__ import annotations

import pickle

import pytest

from cache_actors.engine.requests import LLMRequest
from deployments.common.llm_wire import wire_bytes_bound

REQUESTS = [
    {"prompt": "hello"},
    {"prompt": "é€😀" * 5000, "sampling": {"stop": ["😀" * 50, "end"], "max_new_tokens": 3}},
    {"messages": [{"role": "user", "content": "字" * 20000}, {"role": "assistant", "content": "ok"}]},
    {"prompt_token_ids": list(range(100_000, 140_000))},
    {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(500)}}}}},
    {"prompt": "x", "sampling": {"stop": "one stop"}, "tenant_id": "t" * 256, "session_id": "s" * 200,
     "request_id": "r" * 3000},
]


@pytest.mark.parametrize("request_dict", REQUESTS)
def test_the_bound_covers_the_pickled_request_as_a_dict_and_as_an_llmrequest(request_dict: dict) -> None:
    parsed = LLMRequest.parse(request_dict)
    assert wire_bytes_bound(request_dict) >= len(pickle.dumps(request_dict))
    assert wire_bytes_bound(parsed) >= len(pickle.dumps(parsed))
