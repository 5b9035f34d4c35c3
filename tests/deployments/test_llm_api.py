"""The `llm` application end to end: real HTTP on a local Serve instance, the demo model,
continuous batching and the distributed KV cache (shard actors)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import jsonschema
import pytest
from ray import serve

from cache_actors.engine.model_runner import ModelRunner
from deployments.llm import build_llm
from tests.deployments.conftest import run_app
from tests.deployments.llm_test_support import greedy_reference

MAX_MODEL_LEN = 1024
ARGS = {
    "num_replicas": 1,
    "max_model_len": MAX_MODEL_LEN,
    "max_batch_size": 8,
    "max_tokens_limit": 256,
    "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 32},
}


@pytest.fixture(scope="module")
def base_url(serve_instance) -> Iterator[str]:
    # Off the gateway's /v1 (the proxy routes by longest prefix), so both are reachable here.
    run_app(build_llm(ARGS), name="llm", route_prefix="/direct/v1")
    yield f"{serve_instance.base_url}/direct/v1"
    serve.delete("llm")


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def reference() -> ModelRunner:
    """The same demo model in this process: one request, no cache, no batching."""
    return ModelRunner.load(None)


def model_id(client: httpx.Client) -> str:
    return client.get("/models").json()["data"][0]["id"]


def test_models_lists_the_demo_model(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"].startswith("blatam-demo") and card["max_model_len"] == MAX_MODEL_LEN


def test_greedy_output_same_with_and_without_cache_and_batching(client: httpx.Client, reference: ModelRunner) -> None:
    system = "You are the assistant of ACME Corp. Answer in one sentence. " * 3
    prompts = [system + f"Question {i}: what is our refund policy?" for i in range(4)]
    expected = [greedy_reference(reference, reference.encode(p), 24) for p in prompts]
    body = {"model": model_id(client), "max_tokens": 24, "temperature": 0}

    first = client.post("/completions", json={**body, "prompt": prompts[0]}).json()
    assert first["choices"][0]["text"] == expected[0]
    assert first["usage"]["prompt_tokens"] == len(reference.encode(prompts[0]))
    assert first["usage"]["completion_tokens"] + first["usage"]["prompt_tokens"] == first["usage"]["total_tokens"]

    again = client.post("/completions", json={**body, "prompt": prompts[0]}).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert again["choices"][0]["text"] == expected[0]

    results: dict[int, dict] = {}

    def call(i: int) -> None:
        results[i] = client.post("/completions", json={**body, "prompt": prompts[i]}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        assert results[i]["choices"][0]["text"] == want, i


def test_chat_streaming_in_openai_format(client: httpx.Client) -> None:
    body = {
        "model": model_id(client),
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] <= 12
    plain = {k: v for k, v in body.items() if k != "stream_options"} | {"stream": False}
    whole = client.post("/chat/completions", json=plain).json()
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert whole["choices"][0]["message"]["content"] == streamed
    assert whole["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the stream stored the prompt


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_structured_output_validates_against_the_schema(client: httpx.Client, temperature: float) -> None:
    body = {
        "model": model_id(client),
        "messages": [{"role": "user", "content": "Describe a user as JSON."}],
        "max_tokens": 200,
        "temperature": temperature,
        "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    }
    choice = client.post("/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    anything = client.post("/chat/completions", json={**body, "response_format": {"type": "json_object"}}).json()
    assert isinstance(json.loads(anything["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, None),
    ],
)
def test_refused_parameters_are_400_with_openai_body(client: httpx.Client, patch: dict, param: str | None) -> None:
    body = {"model": model_id(client), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **patch}
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_prompt_over_the_context_is_400(client: httpx.Client) -> None:
    body = {"model": model_id(client), "prompt": "word " * 200, "max_tokens": 256}
    response = client.post("/completions", json=body)
    assert response.status_code == 400
    assert "context" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_grpcs_4_mib_still_reaches_the_replica_and_is_a_400(client: httpx.Client, stream: bool) -> None:
    # Calls go by value over the replica's gRPC server, which refuses over 4 MiB unless its runtime_env raises
    # the cap (this test app's does not): such a request must go by actor call, not fail with a 500.
    body = {"model": model_id(client), "prompt": "word " * 1_100_000, "max_tokens": 4, "stream": stream}
    response = client.post("/completions", json=body)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/chat/completions", b"{not json"),
    ("POST", "/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "frequency_penalti": 1}'),
    ("POST", "/chat/completions", b'{"max_tokens": 2}'),
    ("POST", "/chat/completions", b'{"messages": "hi"}'),
    ("POST", "/chat/completions", b'[1, 2]'),
    ("POST", "/completions", b'{"prompt": "hi", "model": "gpt-4"}'),
    ("POST", "/completions", b'{"prompt": "hi", "max_tokens": 100000}'),
    ("POST", "/completions", b'{"prompt": "hi", "n": 2, "temperature": -3}'),
    ("GET", "/nowhere", b""),
    ("DELETE", "/completions", b""),
])
def test_every_openai_error_has_a_code(client: httpx.Client, method: str, path: str, body: bytes) -> None:
    response = client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], error
    assert error["message"] and "Traceback" not in error["message"]


def test_chat_without_max_tokens_runs_to_the_end_of_the_context(client: httpx.Client) -> None:
    body = {"model": model_id(client), "messages": [{"role": "user", "content": "word " * 80}], "temperature": 0}
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= MAX_MODEL_LEN


def test_handle_generate_for_services(base_url: str, reference: ModelRunner) -> None:
    server = serve.get_deployment_handle("LLMServer", app_name="llm")
    prompt = "Draft a two-line business update."
    result = server.generate.remote({"prompt": prompt, "sampling": {"max_new_tokens": 12}}).result()
    assert result["text"] == greedy_reference(reference, reference.encode(prompt), 12)
    assert result["prompt_tokens"] == len(reference.encode(prompt)) and result["model"].startswith("blatam-demo")
    with pytest.raises(ValueError, match="exactly one"):
        server.generate.remote({"sampling": {"max_new_tokens": 4}}).result()


def stats_when(server, condition, timeout_s: float = 30.0) -> dict:
    """The replica's `get_stats` once ``condition`` holds for them, or the last ones after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition(stats := server.get_stats.remote().result()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return stats


def test_disconnected_client_frees_its_slot(client: httpx.Client) -> None:
    server = serve.get_deployment_handle("LLMServer", app_name="llm")
    body = {"model": model_id(client), "prompt": "Tell me a very long story.", "max_tokens": 256, "stream": True}
    with client.stream("POST", "/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    assert stats_when(server, lambda stats: stats["running"] == 0)["running"] == 0


def test_client_leaving_a_whole_answer_stops_its_generation(base_url: str, client: httpx.Client) -> None:
    """A non-streamed request is one plain call to the replica (``generate_events``): hanging up must cancel it there
    too, not leave the row decoding to ``max_tokens`` for nobody."""
    import socket
    from urllib.parse import urlsplit

    server = serve.get_deployment_handle("LLMServer", app_name="llm")
    body = json.dumps({"model": model_id(client), "prompt": "word " * 120, "max_tokens": 256, "ignore_eos": True,
                       "temperature": 0}).encode()
    url = urlsplit(base_url)
    head = (f"POST {url.path}/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    steps_before = server.get_stats.remote().result()["decode_steps"]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head + body)
        if stats_when(server, lambda stats: stats["running"] != 0)["running"] != 1:
            sock.settimeout(5)
            pytest.fail(f"the request never started: {sock.recv(2000)!r}")
    stats = stats_when(server, lambda stats: stats["running"] == 0)
    assert stats["running"] == 0
    assert stats["decode_steps"] - steps_before < 255, "the row decoded every token after its client left"


def test_a_full_queue_is_a_503_with_retry_after_for_whole_and_streamed_answers(serve_instance) -> None:
    """More requests than one replica's batch and queue hold: the extra ones get OpenAI's error body with
    503 and Retry-After (the batcher's refusal crosses a plain call and a streamed one alike), never a 500."""
    from concurrent.futures import ThreadPoolExecutor

    args = {"num_replicas": 1, "max_model_len": 256, "max_batch_size": 1, "max_waiting": 1, "max_tokens_limit": 128,
            "cache": {"enable_distributed": False}}
    run_app(build_llm(args), name="llm-tight", route_prefix="/tight/v1")
    try:
        with httpx.Client(base_url=f"{serve_instance.base_url}/tight/v1", timeout=120) as tight:
            name = model_id(tight)

            def call(i: int) -> httpx.Response:
                body = {"model": name, "prompt": f"request {i}", "max_tokens": 96, "ignore_eos": True,
                        "stream": i % 2 == 1}
                return tight.post("/completions", json=body)

            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(call, range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 503} and statuses[0] == 200 and statuses[-1] == 503, statuses
        for refused in (r for r in responses if r.status_code == 503):
            assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "overloaded"
    finally:
        serve.delete("llm-tight")


# --- through the gateway: API keys, tenants ------------------------------------------------------
SECRET = "llm-gateway-test-secret-0123456789-abcdefgh"
GATEWAY_PREFIXES = ["/v1", "/api/v1/llm"]
"""Where the gateway serves the LLM's OpenAI API: its own /v1, and the service path."""


@pytest.fixture(scope="module")
def gateway(base_url: str, serve_instance) -> Iterator[tuple[str, dict[str, str]]]:
    import asyncio
    import uuid

    from deployments.app_builder import build_gateway
    from tests.conftest import TEST_DATABASE_URL
    from tests.storage_fixtures import drop_schema, seed_api_keys, unique_schema

    schema = unique_schema("llmgw")
    settings = {
        "blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL, "database_schema": schema,
        "rate_limit_key_prefix": f"test-llmgw-{uuid.uuid4().hex[:8]}", "rate_limit_default": "1000/minute",
        "gateway_request_timeout_s": 60,
    }
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")

    by_user = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                        users={"ann": ("acme", "llm"), "bo": ("globex", "llm"),
                                               "cy": ("acme", "redundancy")}))
    keys = {"acme": by_user["ann"], "globex": by_user["bo"], "no-llm-scope": by_user["cy"]}
    try:
        yield serve_instance.base_url, keys
    finally:
        serve.delete("gateway")
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_forwards_with_tenant_isolated_cache(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    url, keys = gateway
    body = {"messages": [{"role": "user", "content": f"{prefix}: " + "Our shared onboarding checklist. " * 6}],
            "max_tokens": 4, "temperature": 0}

    def ask(tenant: str) -> httpx.Response:
        return httpx.post(f"{url}{prefix}/chat/completions", json=body, headers={"X-API-Key": keys[tenant]}, timeout=120)

    assert httpx.post(f"{url}{prefix}/chat/completions", json=body, timeout=60).status_code == 401
    first, again, other = ask("acme"), ask("acme"), ask("globex")
    assert first.status_code == 200, first.text
    assert first.json()["object"] == "chat.completion"
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    # Same prompt, other tenant: its keys are salted apart, so nothing is shared (or probeable by timing).
    assert other.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert other.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_streams_events_as_they_are_produced(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    url, keys = gateway
    body = {"messages": [{"role": "user", "content": "Write a short product update."}], "max_tokens": 24,
            "temperature": 0, "stream": True}
    reads: list[bytes] = []
    with httpx.stream("POST", f"{url}{prefix}/chat/completions", json=body, headers={"X-API-Key": keys["acme"]},
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] and "x-ratelimit-limit" in response.headers
        reads = [chunk for chunk in response.iter_raw() if chunk]
    events = [line for line in b"".join(reads).decode().split("\n") if line]
    assert events[-1] == "data: [DONE]"
    # Buffered, the events arrive in one write (one read); streamed, they come event by event.
    assert len(reads) >= 2, reads
    streamed = "".join(json.loads(e.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
                       for e in events[:-1])
    whole = httpx.post(f"{url}{prefix}/chat/completions", json=body | {"stream": False},
                       headers={"X-API-Key": keys["acme"]}, timeout=120)
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"] == streamed


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_stream_errors_and_disconnects(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    url, keys = gateway
    bad = httpx.post(f"{url}{prefix}/chat/completions", headers={"X-API-Key": keys["acme"]}, timeout=60,
                     json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "temperature": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    assert bad.json()["error"]["request_id"] == bad.headers["x-request-id"]
    server = serve.get_deployment_handle("LLMServer", app_name="llm")
    body = {"prompt": "Tell me a very long story.", "max_tokens": 256, "stream": True}
    with httpx.stream("POST", f"{url}{prefix}/completions", json=body, headers={"X-API-Key": keys["globex"]},
                      timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # one event, then hang up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.get_stats.remote().result()["running"]:
        time.sleep(0.2)
    assert server.get_stats.remote().result()["running"] == 0


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_openai_client_through_the_gateway_with_an_api_key(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    """An OpenAI client sends its api_key as a bearer credential; streams arrive through the gateway."""
    import openai

    url, keys = gateway
    client = openai.OpenAI(base_url=f"{url}{prefix}", api_key=keys["acme"], max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Name three colours."}]
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    assert streamed == whole.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}{prefix}", api_key="blt_000000000000_" + "x" * 43,
                      max_retries=0).models.list()


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_openai_api_needs_the_llm_scope(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    url, keys = gateway
    for method, path in (("GET", "/models"), ("POST", "/chat/completions"), ("POST", "/tokenize")):
        refused = httpx.request(method, f"{url}{prefix}{path}", timeout=60, json={"prompt": "hi"},
                                headers={"Authorization": f"Bearer {keys['no-llm-scope']}"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "insufficient_scope"
        anonymous = httpx.request(method, f"{url}{prefix}{path}", timeout=60, json={"prompt": "hi"})
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    tokens = httpx.post(f"{url}{prefix}/tokenize", timeout=60, json={"prompt": "hello there"},
                        headers={"Authorization": f"Bearer {keys['acme']}"})
    assert tokens.status_code == 200 and tokens.json()["count"] == len(tokens.json()["tokens"]) > 0, tokens.text


def test_readme_samples_against_the_llm(gateway: tuple[str, dict[str, str]]) -> None:
    """The README's samples that talk to `/v1` of a running system, pointed at this Serve instance's gateway."""
    import os
    import subprocess
    import sys

    from tests.readme_samples import LOCAL_SERVER, code_blocks, needs_server

    origin, keys = gateway
    env = {**os.environ, "BLATAM_API_KEY": keys["acme"]}
    python = [b for b in code_blocks("python") if needs_server(b)]
    curl = [b for b in code_blocks("bash") if needs_server(b) and b.lstrip().startswith("curl localhost:8000/v1")]
    assert python and curl
    for sample in python:
        done = subprocess.run([sys.executable, "-c", sample.replace(LOCAL_SERVER, origin)], capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    for sample in curl:
        script = "set -euo pipefail\n" + sample.replace("curl ", "curl -sS --fail-with-body -m 120 ").replace(
            "localhost:8000", origin.removeprefix("http://"))
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "data: [DONE]" in done.stdout


def test_n_choices_on_the_cache_aware_router(client: httpx.Client, reference: ModelRunner) -> None:
    """n >= 2 fans out into n handle calls from one Serve request; each must be routed (it hung)."""
    prompt = "List two benefits of a shared KV cache."
    body = {"model": model_id(client), "max_tokens": 6, "temperature": 0, "prompt": prompt}
    expected = greedy_reference(reference, reference.encode(prompt), 6)
    for n in (2, 3):
        done = client.post("/completions", json={**body, "n": n}, timeout=60)
        assert done.status_code == 200, done.text
        assert [c["text"] for c in done.json()["choices"]] == [expected] * n
    streamed = client.post("/completions", json={**body, "n": 2, "stream": True}, timeout=60)
    events = [json.loads(line.removeprefix("data: ")) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    texts = ["".join(e["choices"][0]["text"] for e in events if e["choices"] and e["choices"][0]["index"] == i)
             for i in (0, 1)]
    assert texts == [expected, expected]


def test_deeply_nested_json_is_a_400(client: httpx.Client) -> None:
    from deployments.llm.openai.routes import MAX_JSON_DEPTH

    # One level over the bound, 1,000 (which the model replica's parser accepts: importing torch._dynamo
    # raises the recursion limit) and 100,000 (past any parser's stack) are refused as too deep ...
    for arrays in (MAX_JSON_DEPTH, 1000, 100_000):
        deep = '{"messages": ' + "[" * arrays + "]" * arrays + "}"
        response = client.post("/chat/completions", content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_json", (arrays, response.text)
    # ... and a body at the bound is read, then refused for what it says
    at_bound = '{"messages": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    response = client.post("/chat/completions", content=at_bound, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] != "invalid_json", response.text


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_n_choices_do_not_hang_or_block_other_tenants(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    import asyncio

    url, keys = gateway
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def ask(tenant: str, n: int) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as http:
            return await http.post(f"{url}{prefix}/chat/completions", json={**body, "n": n},
                                   headers={"X-API-Key": keys[tenant]})

    async def together() -> list[httpx.Response]:
        return await asyncio.gather(ask("acme", 2), ask("acme", 2), ask("globex", 1))

    answers = asyncio.run(together())
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [len(a.json()["choices"]) for a in answers] == [2, 2, 1]


@pytest.mark.parametrize("prefix", GATEWAY_PREFIXES)
def test_gateway_bodies_up_to_the_limit_reach_the_llm(gateway: tuple[str, dict[str, str]], prefix: str) -> None:
    """A 5 MB prompt is within the gateway's 10 MiB body limit: the LLM itself answers (context too long)."""
    url, keys = gateway
    headers = {"X-API-Key": keys["acme"], "content-type": "application/json"}
    prompt = "word " * 1_000_000
    big = httpx.post(f"{url}{prefix}/chat/completions", headers=headers, timeout=120,
                     json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 2})
    assert big.status_code == 400, big.text[:500]
    assert big.json()["error"]["code"] == "context_length_exceeded", big.text[:500]
    deep = httpx.post(f"{url}{prefix}/chat/completions", headers=headers, timeout=60,
                      content='{"messages": ' + "[" * 1000 + "]" * 1000 + "}")
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json", deep.text[:500]
    assert deep.json()["error"]["request_id"] == deep.headers["x-request-id"]


# --- tool calling on the served model --------------------------------------------------------------
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get current temperature for a given location.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer",
                   "minimum": 1, "maximum": 5}}, "required": ["location", "days"], "additionalProperties": False},
    "strict": True}}]


def test_openai_tool_calls_through_the_gateway_and_on_v1(base_url: str, gateway: tuple[str, dict[str, str]]) -> None:
    """The SDK's tool-calling loop on the batched, cached replica: the call validates, the result goes back."""
    import openai

    url, keys = gateway
    for client in (openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120),
                   openai.OpenAI(base_url=f"{url}/api/v1/llm", api_key=keys["acme"], max_retries=0, timeout=120)):
        model = client.models.list().data[0].id
        messages = [{"role": "user", "content": "What is the weather like in Paris for three days?"}]
        first = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="required",
                                               temperature=0)
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])
        stream = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="required",
                                                temperature=0, stream=True)
        arguments, finish = "", None
        for chunk in stream:
            for delta in chunk.choices[0].delta.tool_calls or []:
                arguments += delta.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and arguments == call.function.arguments
        messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "14 C"}]
        second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=8,
                                                temperature=0)
        assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
        # The second turn repeats the first as its prefix: the cache serves it.
        assert second.usage.prompt_tokens_details.cached_tokens > 0


def test_handle_client_returns_tool_calls(base_url: str) -> None:
    """Business services call tools through `LLMHandleClient`, the path Business Agents takes."""
    import asyncio

    from business_modules.llm_client import LLMRequestSpec, ToolSpec
    from deployments.common.llm_handle import LLMHandleClient

    params = TOOLS[0]["function"]["parameters"]
    spec = LLMRequestSpec(messages=[{"role": "user", "content": "Weather?"}], max_tokens=120, tenant_id="acme",
                          tools=[ToolSpec("get_weather", "weather", params), ToolSpec("noop")], tool_choice="get_weather")
    done = asyncio.run(LLMHandleClient().generate(spec))
    assert done.finish_reason == "tool_calls" and done.text == ""
    assert [c.name for c in done.tool_calls] == ["get_weather"]
    jsonschema.validate(done.tool_calls[0].parsed_arguments(), params)


# --- what benchmark harnesses send (vLLM's extensions, token-id prompts) ----------------------------
def test_token_id_prompts_equal_their_text(client: httpx.Client, reference: ModelRunner) -> None:
    text = "Quarterly revenue grew by"
    ids = reference.encode(text)
    base = {"model": model_id(client), "max_tokens": 8, "temperature": 0}
    by_text = client.post("/completions", json={**base, "prompt": text}).json()
    for prompt in (ids, [ids]):
        by_ids = client.post("/completions", json={**base, "prompt": prompt}).json()
        assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
        assert by_ids["usage"]["prompt_tokens"] == len(ids)
    bad = client.post("/completions", json={**base, "prompt": [1, 10**9]})
    assert bad.status_code == 400 and "prompt_token_ids" in bad.json()["error"]["message"]


def test_ignore_eos_min_tokens_and_continuous_usage_as_guidellm_sends_them(client: httpx.Client) -> None:
    """GuideLLM's body for a fixed output length: ignore_eos, stop null, include and continuous usage."""
    body = {"model": model_id(client), "prompt": "Benchmark prompt " * 4, "max_tokens": 20, "stop": None,
            "ignore_eos": True, "min_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with client.stream("POST", "/completions", json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert all(chunk["usage"] is not None for chunk in chunks)
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts) and counts[-1] == 20  # exact length: EOS ignored
    prompt_tokens = {chunk["usage"]["prompt_tokens"] for chunk in chunks}
    assert len(prompt_tokens) == 1 and prompt_tokens.pop() > 0
    assert chunks[-1]["choices"] == [] and chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_logprobs_in_openai_shapes(client: httpx.Client, reference: ModelRunner) -> None:
    """Completions' legacy shape and chat's, whole and streamed; greedy tokens are their own top-1."""
    import openai

    sdk = openai.OpenAI(base_url=str(client.base_url), api_key="unused", max_retries=0, timeout=120)
    model = model_id(client)
    done = sdk.completions.create(model=model, prompt="Revenue grew by", max_tokens=5, temperature=0, logprobs=3)
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == done.choices[0].text and lp.text_offset[0] == 0
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) <= 3 and max(top.values()) == value
    streamed = list(sdk.completions.create(model=model, prompt="Revenue grew by", max_tokens=5, temperature=0,
                                           logprobs=3, stream=True))
    tokens = [t for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
              for t in chunk.choices[0].logprobs.tokens]
    assert tokens == lp.tokens
    chat = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == c.logprob for c in content)
    assert all(bytes(c.bytes).decode("utf-8", "replace") == c.token for c in content)


def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_asks(client: httpx.Client, reference: ModelRunner) -> None:
    """lm-eval's loglikelihood request: echo, logprobs, max_tokens 1, temperature 0; the prompt's logprobs
    equal a forward of the prompt in this process."""
    import torch

    context, continuation = "The meeting is moved to", " Friday"
    ids = reference.encode(context + continuation)
    body = {"model": model_id(client), "prompt": context + continuation, "echo": True, "logprobs": 1,
            "max_tokens": 1, "temperature": 0, "seed": 1234}
    got = client.post("/completions", json=body).json()["choices"][0]
    assert got["text"].startswith(context + continuation)
    lp = got["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == len(ids) + 1  # the prompt's tokens, then the generated one
    with torch.inference_mode():
        full = torch.log_softmax(reference.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    for position in range(1, len(ids)):
        assert abs(lp["token_logprobs"][position] - float(full[position - 1, ids[position]])) < 1e-3
    by_ids = client.post("/completions", json={**body, "prompt": ids, "logprobs": None}).json()["choices"][0]
    assert by_ids["text"] == got["text"] and by_ids["logprobs"] is None  # echo of a token-id prompt: its text


def test_tokenize_detokenize_and_version_as_vllm_answers_them(client: httpx.Client, reference: ModelRunner) -> None:
    text = "Quarterly revenue grew by 12%"
    counted = client.post("/tokenize", json={"model": model_id(client), "prompt": text}).json()
    assert counted == {"count": len(reference.encode(text)), "max_model_len": MAX_MODEL_LEN,
                       "tokens": reference.encode(text)}
    back = client.post("/detokenize", json={"tokens": counted["tokens"]}).json()
    assert back == {"prompt": reference.tokenizer.decode(counted["tokens"])}
    messages = [{"role": "user", "content": text}]
    chat = client.post("/tokenize", json={"messages": messages}).json()
    used = client.post("/chat/completions", json={"messages": messages, "max_tokens": 1}).json()["usage"]
    assert chat["count"] == used["prompt_tokens"]
    assert client.get("/version").json()["version"]
    for path, body, status in (("/tokenize", {"prompt": text, "model": "gpt-4o"}, 404),
                               ("/tokenize", {"prompt": text, "messages": messages}, 400),
                               ("/tokenize", {"prompt": text, "extra": 1}, 400),
                               ("/detokenize", {"tokens": [1, 10**9]}, 400),
                               ("/detokenize", {"tokens": "1 2"}, 400)):
        response = client.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_non_streamed_answer_crosses_the_handle_as_one_delta(base_url: str, reference: ModelRunner) -> None:
    """``stream_deltas: false`` (what the ingress sends for ``stream: false``): one delta, then done, same text."""
    server = serve.get_deployment_handle("LLMServer", app_name="llm").options(stream=True)
    prompt = "Draft a two-line business update."

    async def events(live: bool) -> list[dict]:
        request = {"prompt": prompt, "sampling": {"max_new_tokens": 12}, "stream_deltas": live}
        return [event async for event in server.generate_stream.remote(request)]

    import asyncio

    live, whole = asyncio.run(events(True)), asyncio.run(events(False))
    assert [e["type"] for e in whole] == ["delta", "done"] and len(live) > 2
    assert whole[0]["text"] == "".join(e["text"] for e in live if e["type"] == "delta")
    assert whole[0]["token_ids"] == [t for e in live if e["type"] == "delta" for t in e["token_ids"]]
