"""The OpenAI-compatible HTTP layer of the LLM deployment, over a real tiny-model backend (no Ray cluster).

Covers response and chunk shapes, streaming with usage and [DONE], n > 1,
every refused parameter (400, OpenAI's body, the right ``param``), backend
refusals (also wrapped as Ray wraps them), errors after the stream started,
and that a client leaving closes the backend stream.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError

from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.requests import Sampling
from deployments.common.forwarding import call_asgi
from tests.deployments.llm_test_support import (
    MAX_TOKENS_LIMIT,
    HandleLikeStream,
    ReplyLike,
    TinyBackend,
    make_app,
    mounted,
    post_then_leave,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER_MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.load(None, demo_spec=TINY_SPEC)


@pytest.fixture
def backend(runner: ModelRunner) -> TinyBackend:
    return TinyBackend(runner)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=mounted(app), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://llm")


@pytest.fixture
async def client(backend: TinyBackend, runner: ModelRunner):
    async with client_for(make_app(backend.generate_stream, runner)) as http:
        yield http


def sse_payloads(raw: str) -> list[Any]:
    """Every ``data:`` payload of an SSE body, JSON-decoded (``[DONE]`` stays a string)."""
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["param"] == param
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error


async def test_models_list_and_lookup(client: httpx.AsyncClient, runner: ModelRunner):
    listed = (await client.get("/v1/models")).json()
    assert listed == {"object": "list", "data": [{"id": runner.model_id, "object": "model",
                                                 "created": listed["data"][0]["created"], "owned_by": "blatam",
                                                 "max_model_len": runner.max_context}]}
    assert (await client.get(f"/v1/models/{runner.model_id}")).json()["id"] == runner.model_id
    assert assert_openai_error(await client.get("/v1/models/gpt-4"), 404, "model")["code"] == "model_not_found"
    assert (await client.get("/v1/health")).json()["status"] == "ok"


async def test_completion_response_shape(client: httpx.AsyncClient, backend: TinyBackend, runner: ModelRunner):
    prompt = "The quick brown fox"
    body = {"model": runner.model_id, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    got = (await client.post(COMPLETIONS, json=body)).json()
    assert got["id"].startswith("cmpl-") and got["object"] == "text_completion"
    assert isinstance(got["created"], int) and got["model"] == runner.model_id
    [choice] = got["choices"]
    assert choice == {"index": 0, "text": backend.outputs[got["id"]], "logprobs": None,
                      "finish_reason": choice["finish_reason"]}
    assert choice["finish_reason"] in ("stop", "length")
    usage = got["usage"]
    assert usage["prompt_tokens"] == len(runner.encode(prompt))
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    [sent] = backend.requests
    assert sent.prompt == prompt and sent.messages is None and pickle.loads(pickle.dumps(sent)) == sent
    assert sent.sampling == Sampling(max_new_tokens=12, temperature=0.0, top_p=1.0, stop=(), seed=None)


async def test_chat_response_shape_and_message_conversion(client, backend: TinyBackend, runner: ModelRunner):
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Ok"}]},
                {"role": "user", "content": "Hi", "name": "ana"}]
    got = (await client.post(CHAT, json={"messages": messages, "max_completion_tokens": 8, "temperature": 0})).json()
    assert got["id"].startswith("chatcmpl-") and got["object"] == "chat.completion"
    [choice] = got["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == backend.outputs[got["id"]]
    assert choice["logprobs"] is None and choice["index"] == 0
    converted = [{"role": "system", "content": "Be brief.\nOk"}, {"role": "user", "content": "Hi"}]
    assert backend.requests[0].messages == converted and backend.requests[0].prompt is None
    assert got["usage"]["prompt_tokens"] == len(runner.encode_chat(converted))


async def test_streamed_completion_matches_unstreamed(client: httpx.AsyncClient):
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0, "stop": ["zz"]}
    whole = (await client.post(COMPLETIONS, json=body)).json()
    options = {"include_usage": True, "include_obfuscation": False}
    streamed = await client.post(COMPLETIONS, json={**body, "stream": True, "stream_options": options, "store": False})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(streamed.text)
    assert payloads[-1] == "[DONE]"
    chunks, usage_chunk = payloads[:-2], payloads[-2]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] and c["usage"] is None for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]


async def test_streamed_chat_chunks(client: httpx.AsyncClient):
    body = {"messages": USER_MESSAGES, "max_tokens": 16, "temperature": 0}
    whole = (await client.post(CHAT, json=body)).json()
    payloads = sse_payloads((await client.post(CHAT, json={**body, "stream": True})).text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_fan_out_with_seeds(client: httpx.AsyncClient, backend: TinyBackend, stream: bool):
    body = {"prompt": "Abc", "max_tokens": 10, "n": 2, "seed": 7, "temperature": 1.0, "stream": stream}
    response = await client.post(COMPLETIONS, json=body)
    assert sorted(r.sampling.seed for r in backend.requests) == [7, 8]
    ids = sorted(r.request_id for r in backend.requests)
    if stream:
        chunks = sse_payloads(response.text)[:-1]
        texts = {i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in (0, 1)}
        finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
        assert sorted(finished) == [0, 1]
        response_id = chunks[0]["id"]
    else:
        got = response.json()
        assert [c["index"] for c in got["choices"]] == [0, 1]
        texts = {c["index"]: c["text"] for c in got["choices"]}
        response_id = got["id"]
        assert got["usage"]["prompt_tokens"] == len(backend.runner.encode("Abc"))
        assert got["usage"]["completion_tokens"] == sum(backend.completion_tokens.values())
    assert ids == [f"{response_id}-0", f"{response_id}-1"]
    assert texts == {0: backend.outputs[ids[0]], 1: backend.outputs[ids[1]]}


COMPLETION = {"prompt": "Hi", "max_tokens": 4}
CHAT_BODY = {"messages": USER_MESSAGES, "max_tokens": 4}
REFUSED = [
    # (path, changes to a valid body, param named in the error)
    (COMPLETIONS, {"max_tokens": 0}, "max_tokens"),
    (COMPLETIONS, {"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens"),
    (COMPLETIONS, {"max_tokens": True}, "max_tokens"),
    (CHAT, {"max_completion_tokens": 0}, "max_completion_tokens"),
    (CHAT, {"max_completion_tokens": MAX_TOKENS_LIMIT + 1}, "max_completion_tokens"),
    (CHAT, {"max_tokens": MAX_TOKENS_LIMIT + 1, "max_completion_tokens": 4}, "max_tokens"),
    (COMPLETIONS, {"temperature": -0.1}, "temperature"),
    (CHAT, {"temperature": 2.5}, "temperature"),
    (CHAT, {"temperature": "hot"}, "temperature"),
    (COMPLETIONS, {"top_p": 0}, "top_p"),
    (CHAT, {"top_p": 1.5}, "top_p"),
    (COMPLETIONS, {"n": 0}, "n"),
    (CHAT, {"n": 9}, "n"),
    (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (COMPLETIONS, {"stop": [""]}, "stop"),
    (COMPLETIONS, {"stop": 3}, "stop"),
    (CHAT, {"seed": "7"}, "seed"),
    (CHAT, {"seed": 1.5}, "seed"),
    (COMPLETIONS, {"logprobs": 21}, "logprobs"),
    (COMPLETIONS, {"logprobs": -1}, "logprobs"),
    (CHAT, {"logprobs": 1}, "logprobs"),
    (CHAT, {"top_logprobs": 2}, "top_logprobs"),
    (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    (CHAT, {"tools": []}, "tools"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools"),
    (CHAT, {"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 70_000}}]}, "tools"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f", "extra": 1}}]}, "tools[0].function.extra"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]},
     "tools[1].function.name"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": True},
     "parallel_tool_calls"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"tool_choice": "auto"}, "tool_choice"),
    (CHAT, {"messages": [*USER_MESSAGES, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    (CHAT, {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    (CHAT, {"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
    (COMPLETIONS, {"echo": "yes"}, "echo"),
    (COMPLETIONS, {"best_of": 2}, "best_of"),
    (COMPLETIONS, {"suffix": "end"}, "suffix"),
    (CHAT, {"logit_bias": {"50": 10}}, "logit_bias"),
    (CHAT, {"presence_penalty": 0.5}, "presence_penalty"),
    (COMPLETIONS, {"frequency_penalty": -1}, "frequency_penalty"),
    (CHAT, {"messages": []}, "messages"),
    (CHAT, {"messages": "hi"}, "messages"),
    (CHAT, {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, -2, 3]}, "prompt"),
    (COMPLETIONS, {"prompt": [1, 2.5]}, "prompt"),
    (COMPLETIONS, {"prompt": [True, 2]}, "prompt"),
    (COMPLETIONS, {"prompt": [[1, 2], [3]]}, "prompt"),
    (COMPLETIONS, {"prompt": [[]]}, "prompt"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"min_tokens": -1}, "min_tokens"),
    (COMPLETIONS, {"min_tokens": 17}, "min_tokens"),
    (COMPLETIONS, {"max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    (COMPLETIONS, {"ignore_eos": "yes"}, "ignore_eos"),
    (CHAT, {"stream": True, "stream_options": {"continuous_usage_stats": 1}}, "stream_options.continuous_usage_stats"),
    (CHAT, {"response_format": {"type": "xml"}}, "response_format.type"),
    (CHAT, {"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
     "response_format.json_schema.name"),
    (CHAT, {"stream_options": {"include_usage": True}}, "stream_options"),
    (CHAT, {"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (CHAT, {"stream": "yes"}, "stream"),
    (COMPLETIONS, {"model": 5}, "model"),
    (CHAT, {"audio": {"voice": "x"}}, "audio"),
    (CHAT, {"store": True}, "store"),
]


@pytest.mark.parametrize(("path", "changes", "param"), REFUSED, ids=[f"{p[4:]}-{r}" for p, _, r in REFUSED])
async def test_refused_parameters_answer_400_naming_the_param(client, backend, path, changes, param):
    body = {**(CHAT_BODY if path == CHAT else COMPLETION), **changes}
    assert_openai_error(await client.post(path, json=body), 400, param)
    assert backend.requests == []


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_bodies_that_are_not_requests(client, backend, path):
    assert_openai_error(await client.post(path, content=b"{not json"), 400, None)
    assert_openai_error(await client.post(path, content=b"\xff\xfe"), 400, None)
    assert_openai_error(await client.post(path, json=[1, 2]), 400, None)
    lone = b'"\\ud800 and \\udfff"'  # escapes of lone surrogates: not characters; a tokenizer failed on them (500)
    body = b'{"prompt": ' + lone + b'}' if path == COMPLETIONS else b'{"messages": [{"role": "user", "content": ' + lone + b'}]}'
    assert assert_openai_error(await client.post(path, content=body), 400, None)["code"] == "invalid_json"
    required = "messages" if path == CHAT else "prompt"
    assert assert_openai_error(await client.post(path, json={"max_tokens": 3}), 400, required)["code"] == \
        "missing_required_parameter"
    assert_openai_error(await client.get(path), 405, None)
    assert backend.requests == []


async def test_unknown_model_is_404_and_curl_without_content_type_works(client, backend, runner):
    error = assert_openai_error(await client.post(CHAT, json={**CHAT_BODY, "model": "gpt-4o"}), 404, "model")
    assert error["code"] == "model_not_found"
    body = json.dumps({**COMPLETION, "model": runner.model_id}).encode()
    response = await client.post(COMPLETIONS, content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and len(backend.requests) == 1


async def test_max_tokens_beyond_the_context_is_refused_before_the_backend(backend, runner):
    async with client_for(make_app(backend.generate_stream, runner, max_context=64)) as http:
        error = assert_openai_error(await http.post(COMPLETIONS, json={**COMPLETION, "max_tokens": 64}), 400,
                                    "max_tokens")
    assert error["code"] == "context_length_exceeded" and backend.requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_backend_refusals_are_400(client, backend, runner, stream):
    long_prompt = "x" * (runner.max_context - 100)
    response = await client.post(COMPLETIONS, json={"prompt": long_prompt, "max_tokens": 200, "stream": stream})
    assert "maximum context length" in assert_openai_error(response, 400, None)["message"]
    schema = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    response = await client.post(CHAT, json={**CHAT_BODY, "response_format": schema, "stream": stream})
    assert_openai_error(response, 400, "response_format")
    assert backend.requests[-1].response_format == schema  # passed through as sent


async def test_omitted_max_tokens_is_clamped_to_the_context(client, backend, runner):
    prompt = "y" * (runner.max_context - 60)  # the chat template adds ~25 tokens
    got = (await client.post(COMPLETIONS, json={"prompt": "Hi"})).json()
    assert backend.requests[-1].sampling.max_new_tokens == 16 and got["usage"]["completion_tokens"] <= 16
    got = (await client.post(CHAT, json={"messages": [{"role": "user", "content": prompt}], "temperature": 0})).json()
    assert backend.requests[-1].clamp_max_tokens is True
    assert got["usage"]["prompt_tokens"] + got["usage"]["completion_tokens"] <= runner.max_context


def ray_wrapped(error: ValueError, *, dual: bool) -> RayTaskError:
    wrapped = RayTaskError("generate_stream", "Traceback (most recent call last):\n  ...internal frames...", error)
    return wrapped.as_instanceof_cause() if dual else wrapped


@pytest.mark.parametrize("dual", [True, False])
async def test_refusal_wrapped_by_ray_is_400_with_the_cause_message(runner, dual):
    async def refusing(request):
        raise ray_wrapped(ValueError("prompt is too long for this model"), dual=dual)
        yield  # an async generator, like a Serve stream

    async with client_for(make_app(refusing, runner)) as http:
        for stream in (False, True):
            response = await http.post(COMPLETIONS, json={**COMPLETION, "stream": stream})
            assert assert_openai_error(response, 400, None)["message"] == "prompt is too long for this model"


class QueueFull(RuntimeError):
    """Stands for the batcher's "queue full" error type, which the ingress is told about."""


@pytest.mark.parametrize(("error", "status"), [(QueueFull("waiting queue is full"), 503),
                                                (BackPressureError(num_queued_requests=9, max_queued_requests=8), 503),
                                                (ActorDiedError(), 503),  # the replica died under the request
                                                (RuntimeError("boom"), 500)])
async def test_overload_is_503_and_other_failures_500(runner, error, status):
    async def failing(request):
        raise RayTaskError("generate_stream", "Traceback ...", error)
        yield

    async with client_for(make_app(failing, runner, overloaded_errors=(QueueFull,))) as http:
        response = await http.post(CHAT, json=CHAT_BODY)
    assert_openai_error(response, status, None)
    assert ("retry-after" in response.headers) == (status == 503)


async def test_replica_dying_midway_is_a_retryable_error_event(backend, runner):
    async def dies_midway(request):
        async for event in backend.generate_stream(request):
            yield event
            raise ActorDiedError()

    body = {**CHAT_BODY, "temperature": 0, "stream": True}
    async with client_for(make_app(dies_midway, runner)) as http:
        payloads = sse_payloads((await http.post(CHAT, json=body)).text)
    assert payloads[-1] == "[DONE]" and payloads[-2]["error"]["code"] == "backend_unavailable"


async def test_failure_after_the_stream_started(backend, runner):
    async def fails_midway(request):
        async for event in backend.generate_stream(request):
            yield event
            raise RuntimeError("replica died")

    body = {**CHAT_BODY, "temperature": 0}  # greedy: the first event is a delta (sampled bytes may form none)
    async with client_for(make_app(fails_midway, runner)) as http:
        payloads = sse_payloads((await http.post(CHAT, json={**body, "stream": True})).text)
        assert payloads[-1] == "[DONE]" and payloads[-2]["error"]["type"] == "server_error"
        assert "delta" in payloads[0]["choices"][0]
        assert_openai_error(await http.post(CHAT, json=body), 500, None)


async def test_backend_breaking_the_event_protocol_is_a_500(runner):
    async def no_done(request):
        yield {"type": "delta", "text": "a", "token_ids": [1]}

    async with client_for(make_app(no_done, runner)) as http:
        assert_openai_error(await http.post(COMPLETIONS, json=COMPLETION), 500, None)


@pytest.mark.parametrize("how", ["receive", "send", "cancel"])
@pytest.mark.parametrize("n", [1, 2])
async def test_client_leaving_closes_the_backend_streams(runner, how, n):
    backend = TinyBackend(runner, token_delay_s=0.005)
    app = make_app(backend.generate_stream, runner)
    body = {"messages": USER_MESSAGES, "max_tokens": 300, "temperature": 0, "n": n, "stream": True}
    received = await post_then_leave(app, "/chat/completions", body, after_events=n + 2, how=how)
    assert len(received) >= n + 2
    assert sorted(backend.closed_early) == sorted(r.request_id for r in backend.requests) and len(backend.requests) == n
    assert backend.outputs == {}


async def test_serve_style_stream_is_cancelled_when_the_client_leaves(runner):
    backend = TinyBackend(runner, token_delay_s=0.005)
    handles: list[HandleLikeStream] = []

    def stream_fn(request):
        handles.append(HandleLikeStream(backend.generate_stream(request)))
        return handles[-1]

    body = {"prompt": "Hi", "max_tokens": 300, "temperature": 0, "stream": True}
    await post_then_leave(make_app(stream_fn, runner), "/completions", body, after_events=3, how="receive")
    for _ in range(10):
        await asyncio.sleep(0)
    assert [h.cancelled for h in handles] == [True] and len(backend.closed_early) == 1


async def test_whole_answers_come_as_one_reply_and_a_refused_sibling_cancels_the_others(runner):
    """`ReplyEvents` (a non-streamed choice): the same response as a stream gives, and when one choice of
    ``n: 2`` is refused, the call of the other is cancelled even if it was never awaited."""
    from deployments.llm.openai.over_handle import ReplyEvents

    backend = TinyBackend(runner, token_delay_s=0.005)
    replies: list[ReplyLike] = []

    def reply_fn(request):
        replies.append(ReplyLike(backend.generate_stream(request)))
        return ReplyEvents(replies[-1])

    body = {"prompt": "Hi", "max_tokens": 6, "temperature": 0}
    async with client_for(make_app(reply_fn, runner)) as http:
        whole = (await http.post(COMPLETIONS, json=body)).json()
    async with client_for(make_app(TinyBackend(runner).generate_stream, runner)) as http:
        streamed_backend = (await http.post(COMPLETIONS, json=body)).json()
    assert whole["choices"][0]["text"] == streamed_backend["choices"][0]["text"]
    assert whole["usage"] == streamed_backend["usage"] and replies[0].cancelled is False

    replies.clear()

    def one_refused(request):
        if replies:  # the second choice: refused before its first event, as an overloaded replica does
            async def refuse():
                raise ValueError("refused")
                yield  # pragma: no cover - makes this an async generator

            replies.append(ReplyLike(refuse()))
        else:
            replies.append(ReplyLike(backend.generate_stream(request)))
        return ReplyEvents(replies[-1])

    async with client_for(make_app(one_refused, runner)) as http:
        response = await http.post(COMPLETIONS, json={**body, "max_tokens": 300, "n": 2})
    assert response.status_code == 400, response.text
    assert [r.cancelled for r in replies] == [True, True]
    for _ in range(10):
        await asyncio.sleep(0)
    assert backend.closed_early == [backend.requests[-1].request_id]


async def test_routable_through_the_gateway_with_the_caller_tenant(backend, runner):
    app = make_app(backend.generate_stream, runner)
    body = json.dumps({**CHAT_BODY, "stream": True}).encode()
    response = await call_asgi(app, method="POST", path="/chat/completions", body=body,
                               headers={"content-type": "application/json"}, caller={"tenant": "acme", "subject": "u"})
    assert response.status_code == 200 and sse_payloads(response.body.decode())[-1] == "[DONE]"
    assert backend.requests[0].tenant_id == "acme"


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
async def test_a_token_whose_text_is_held_back_is_streamed_when_it_is_produced(runner, path):
    """vLLM's chunks: one per produced token even while the detokenizer holds its text back (half a UTF-8
    character, a possible stop string), so a client's first-token time and logprobs follow the model. Before,
    nothing was sent until the text was whole: a one-token answer's first chunk waited for the done event."""
    seen_token = asyncio.Event()

    async def holds_back(request):
        yield {"type": "delta", "text": "", "token_ids": [7], "prompt_tokens": 3}
        await seen_token.wait()  # the rest only once the client has the first token's chunk
        yield {"type": "delta", "text": "é", "token_ids": [8]}
        yield {"type": "done", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": 0}

    chunks: list[Any] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            body = {**(COMPLETION if path == COMPLETIONS else CHAT_BODY), "stream": True}
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.extend(sse_payloads(message["body"].decode()))
            choices = chunks[-1]["choices"] if isinstance(chunks[-1], dict) else []
            if choices and (choices[0].get("text") == "" or choices[0].get("delta") == {"content": ""}):
                seen_token.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")], "client": ("t", 1),
             "server": ("llm", 80), "state": {}}
    await asyncio.wait_for(mounted(make_app(holds_back, runner))(scope, receive, send), timeout=30)
    assert seen_token.is_set() and chunks[-1] == "[DONE]"
    tokens = [c["choices"][0] for c in chunks[:-1] if c["choices"] and "role" not in c["choices"][0].get("delta", {})]
    texts = [c["text"] if path == COMPLETIONS else c["delta"].get("content") for c in tokens]
    assert texts == ["", "é", "" if path == COMPLETIONS else None]
    assert [c["finish_reason"] for c in tokens] == [None, None, "length"]
