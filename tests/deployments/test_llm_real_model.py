"""The `llm` application on a real instruct model (SmolLM2-135M-Instruct, pulled once per run):
chat through its own template, streaming, `json_schema`, cache hits and exact prefix reuse,
over real HTTP on a local Serve instance with the distributed KV cache."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from ray import serve

from cache_actors.engine.model_runner import ModelRunner
from deployments.llm import build_llm
from tests.deployments.conftest import run_app
from tests.deployments.llm_test_support import greedy_reference

pytestmark = [pytest.mark.real_model, pytest.mark.ray, pytest.mark.slow]

MAX_MODEL_LEN = 8192
SYSTEM = ("You are a concise assistant for small businesses. Answer in plain English with practical steps. "
          "Keep answers short and concrete.")


@pytest.fixture(scope="module")
def real_url(serve_instance, smollm2_path: Path) -> Iterator[str]:
    args = {
        "model_path": str(smollm2_path), "max_model_len": MAX_MODEL_LEN, "max_batch_size": 4, "max_tokens_limit": 256,
        "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 64},
    }
    run_app(build_llm(args), name="llm-real", route_prefix="/real/v1", timeout_s=300)
    yield f"{serve_instance.base_url}/real/v1"
    serve.delete("llm-real")


@pytest.fixture(scope="module")
def client(real_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=real_url, timeout=180) as c:
        yield c


@pytest.fixture(scope="module")
def reference(smollm2_path: Path) -> ModelRunner:
    """The same model in this process: no cache, no batching, plain greedy decoding."""
    return ModelRunner.load(str(smollm2_path))


def chat(client: httpx.Client, messages: list[dict[str, str]], **extra) -> dict:
    response = client.post("/chat/completions", json={"messages": messages, "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def english_words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+(?:'[a-z]+)?", text)


def test_models_names_the_real_model(client: httpx.Client) -> None:
    card = client.get("/models").json()["data"][0]
    assert card["id"] == "SmolLM2-135M-Instruct"
    assert card["max_model_len"] == MAX_MODEL_LEN  # the model's 8,192 context, capped by max_model_len
    assert card["blatam"]["kind"] == "huggingface"
    assert client.get("/health").json()["kind"] == "huggingface"


def test_chat_answers_in_english_and_stops_at_the_end_of_turn(client: httpx.Client) -> None:
    body = chat(client, [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "How should a small bakery plan its cash flow?"}], max_tokens=48)
    text = body["choices"][0]["message"]["content"]
    words = english_words(text)
    assert len(words) >= 20, text
    assert sum(w.lower() in {"cash", "flow", "bakery", "your", "the", "and", "to"} for w in words) >= 4, text
    # A short question: the answer ends at <|im_end|> (an EOS of generation_config), never shows it.
    short = chat(client, [{"role": "user", "content": "Is Paris in France? Answer yes or no."}], max_tokens=64)
    assert short["choices"][0]["finish_reason"] == "stop", short
    assert "<|im_end|>" not in short["choices"][0]["message"]["content"]
    assert short["usage"]["completion_tokens"] < 64


def test_streamed_text_equals_the_whole_answer(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Give three tips for a product launch email."}]
    whole = chat(client, messages, max_tokens=32)["choices"][0]["message"]["content"]
    pieces: list[str] = []
    with client.stream("POST", "/chat/completions",
                       json={"messages": messages, "temperature": 0, "max_tokens": 32, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == whole


def test_json_schema_output_validates(client: httpx.Client) -> None:
    # Bounded strings, as a schema for a small model should have: the grammar closes them in time.
    schema = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                               "bullets": {"type": "array",
                                                           "items": {"type": "string", "maxLength": 100},
                                                           "minItems": 1, "maxItems": 3}},
              "required": ["title", "bullets"], "additionalProperties": False}
    ask = ("Summarize a weekly team meeting about hiring a barista as JSON with a short title and up to three "
           "bullets.")
    body = chat(client, [{"role": "user", "content": ask}], max_tokens=200, response_format={"type": "json_schema", "json_schema": {"name": "summary", "schema": schema}})
    document = json.loads(body["choices"][0]["message"]["content"])
    jsonschema.validate(document, schema)
    assert english_words(document["title"]), document


def test_shared_system_prompt_hits_the_cache_and_reuse_is_exact(client: httpx.Client, reference: ModelRunner) -> None:
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Write a job ad for a barista."}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What goes into a SWOT analysis?"}]
    chat(client, first, max_tokens=8)
    body = chat(client, second, max_tokens=24)
    usage = body["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 16, usage  # the system prompt's full blocks
    # Greedy text with the reused prefix equals a plain run of the model with no cache at all.
    assert body["choices"][0]["message"]["content"] == greedy_reference(reference, reference.encode_chat(second), 24)
    again = chat(client, second, max_tokens=24)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 16
    assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]


def test_the_readme_shows_what_the_model_answers(real_url: str) -> None:
    """The README's first-run example: its curl, run against this model, prints exactly the text shown."""
    import subprocess

    from tests.readme_samples import code_blocks

    block = next(b for b in code_blocks("console") if "$ curl" in b and "/v1/chat/completions" in b)
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$ curl"))
    end = next(i for i, line in enumerate(lines) if i > start and "| jq" in line)
    command = "\n".join(lines[start: end + 1]).removeprefix("$ ").replace("localhost:8000/v1", real_url.removeprefix("http://"))
    shown = "\n".join(lines[end + 1:])
    # The app's own route here (no gateway): the key the README sends is not checked, but must be set.
    env = {**os.environ, "BLATAM_API_KEY": "not-checked-on-the-apps-own-route"}
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command.replace("curl -s ", "curl -sS --fail-with-body -m 120 ")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip("\n") == shown.rstrip("\n")
