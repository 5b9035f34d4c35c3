"""``stream_interval_ms`` on a real Serve instance: a streamed answer's chunks carry the tokens made meanwhile.

HTTP on the test Serve instance, the demo model: one app with an interval,
compared with the same app's plain (non-streamed) answer. The unit tests of
the pacing itself are tests/cache_actors/test_stream_pacing.py.
"""

from __future__ import annotations

import json

import httpx
import pytest
from ray import serve

from deployments.llm import build_llm
from tests.deployments.conftest import run_app

pytestmark = pytest.mark.ray

APP = "llm-paced"
ARGS = {"num_replicas": 1, "max_model_len": 512, "max_batch_size": 4, "max_tokens_limit": 128,
        "stream_interval_ms": 1000, "cache": {"enable_distributed": False}}
NEW_TOKENS = 64


def test_a_paced_stream_has_the_plain_answers_tokens_in_few_chunks(serve_instance) -> None:
    run_app(build_llm(ARGS), name=APP, route_prefix=f"/{APP}/v1")
    try:
        with httpx.Client(base_url=f"{serve_instance.base_url}/{APP}/v1", timeout=120) as client:
            model = client.get("/models").json()["data"][0]["id"]
            body = {"model": model, "prompt": "Write about the sea.", "max_tokens": NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True, "logprobs": 1}
            plain = client.post("/completions", json=body).json()
            with client.stream("POST", "/completions", json={**body, "stream": True}) as response:
                assert response.status_code == 200
                chunks = []
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        chunks.append(json.loads(line[6:]))
    finally:
        serve.delete(APP)
    texts = [c["choices"][0]["text"] for c in chunks]
    tokens = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert "".join(texts) == plain["choices"][0]["text"]
    assert len(tokens) == NEW_TOKENS  # every token's logprob once, merged chunks included
    assert tokens == plain["choices"][0]["logprobs"]["tokens"]
    # The demo model makes 64 tokens in well under a second here: with a 1-s interval they come as the first
    # token's chunk, then the rest with the finish, not one chunk per token.
    assert len(chunks) <= NEW_TOKENS // 4, [len(c["choices"][0]["text"]) for c in chunks]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
