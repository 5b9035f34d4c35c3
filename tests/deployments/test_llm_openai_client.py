"""The official ``openai`` client against the OpenAI-compatible app, over real HTTP (uvicorn, no Ray).

A real server rather than an in-process transport, so SSE framing, chunked
streaming and a client that hangs up mid-stream behave as they do in production.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import jsonschema
import openai
import pytest
import uvicorn

from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from tests.deployments.conftest import free_port
from tests.deployments.llm_test_support import TinyBackend, make_app, mounted

SERVER_START_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, TinyBackend]]:
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    backend = TinyBackend(runner, token_delay_s=0.002, structured=True)
    port = free_port()
    config = uvicorn.Config(mounted(make_app(backend.generate_stream, runner)), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", backend
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key="unused", max_retries=0)


def test_openai_client_completions(client: openai.OpenAI, served):
    backend = served[1]
    model = client.models.list().data[0].id
    assert model == backend.runner.model_id
    done = client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0)
    assert done.choices[0].text == backend.outputs[done.id]
    assert done.usage.prompt_tokens == len(backend.runner.encode("Hello"))
    assert done.usage.prompt_tokens_details.cached_tokens == 0
    chunks = list(client.completions.create(model=model, prompt="Hello", max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == done.usage.total_tokens


def test_openai_client_chat(client: openai.OpenAI, served):
    backend = served[1]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    done = client.chat.completions.create(model=backend.runner.model_id, messages=messages, max_tokens=10,
                                          temperature=0, n=2)
    assert [c.message.content for c in done.choices] == [backend.outputs[f"{done.id}-{i}"] for i in (0, 1)]
    assert done.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=backend.runner.model_id, messages=messages, max_tokens=10,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason


def test_openai_client_sees_openai_errors(client: openai.OpenAI, served):
    model = served[1].runner.model_id
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=3)
    assert refused.value.param == "temperature" and refused.value.code == "invalid_value"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-4o", prompt="x")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], presence_penalty=1)
    assert unsupported.value.param == "presence_penalty" and unsupported.value.code == "unsupported_parameter"


def test_hanging_up_mid_stream_stops_generation(served):
    url, backend = served
    body = {"prompt": "Tell me a story", "max_tokens": 500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=10) as http, http.stream("POST", f"{url}/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        request_id = backend.requests[-1].request_id
    deadline = time.monotonic() + 5
    while request_id not in backend.closed_early:
        assert time.monotonic() < deadline, "the backend stream was not closed after the client left"
        time.sleep(0.02)
    assert request_id not in backend.outputs


# OpenAI's function-calling guide, as written there (only model and tool_choice differ: the demo model has
# random weights, so "auto" would rarely choose a call; "required" makes it call, with valid arguments).
WEATHER_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get current temperature for a given location.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City and country e.g. Bogotá, Colombia"}},
            "required": ["location"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}]


def get_weather(location: str) -> str:
    return f"14 degrees in {location}"


def test_openai_function_calling_guide_runs(client: openai.OpenAI, served):
    backend = served[1]
    model = backend.runner.model_id
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    completion = client.chat.completions.create(model=model, messages=messages, tools=WEATHER_TOOLS,
                                                tool_choice="required")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    tool_call = choice.message.tool_calls[0]
    assert tool_call.type == "function" and tool_call.id.startswith("call_")
    assert tool_call.function.name == "get_weather"
    args = json.loads(tool_call.function.arguments)
    jsonschema.validate(args, WEATHER_TOOLS[0]["function"]["parameters"])
    result = get_weather(args["location"])

    messages.append(completion.choices[0].message)  # the SDK's own message object goes back as is
    messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": str(result)})
    completion_2 = client.chat.completions.create(model=model, messages=messages, tools=WEATHER_TOOLS,
                                                  tool_choice="none", max_tokens=12)
    assert completion_2.choices[0].message.tool_calls is None
    assert isinstance(completion_2.choices[0].message.content, str)
    rendered = backend.requests[-1].messages  # what the model saw: the call as it wrote it, the result as data
    assert rendered[-2]["content"].startswith('<tool_call>{"name":"get_weather","arguments":')
    assert rendered[-1]["role"] == "user" and json.dumps(result)[1:-1] in rendered[-1]["content"]


def test_streamed_tool_calls_assemble_as_the_guide_does(client: openai.OpenAI, served):
    model = served[1].runner.model_id
    body = {"model": model, "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": WEATHER_TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "temperature": 0}
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls[0]
    stream = client.chat.completions.create(**body, stream=True)
    final_tool_calls: dict[int, object] = {}
    finish = None
    for chunk in stream:
        for tool_call in chunk.choices[0].delta.tool_calls or []:
            index = tool_call.index
            if index not in final_tool_calls:
                final_tool_calls[index] = tool_call
            else:
                final_tool_calls[index].function.arguments += tool_call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(final_tool_calls) == [0]
    streamed = final_tool_calls[0]
    assert streamed.function.name == "get_weather" and streamed.id.startswith("call_")
    assert streamed.function.arguments == whole.function.arguments  # greedy: the same call both ways
    jsonschema.validate(json.loads(streamed.function.arguments), WEATHER_TOOLS[0]["function"]["parameters"])
