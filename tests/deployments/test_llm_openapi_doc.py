"""The OpenAI app documents the bodies it parses by hand, and its real answers fit what it documents.

Over a real tiny-model backend (no Ray cluster); the fuzzer in tests/fuzz then
generates bodies from these schemas against the deployed app and the gateway.
"""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.model_runner import ModelRunner
from deployments.llm.openai.openapi_doc import OPERATIONS
from tests.deployments.llm_test_support import TinyBackend, make_app, mounted


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.load(None, demo_spec=TINY_SPEC)


@pytest.fixture
def app(runner: ModelRunner):
    backend = TinyBackend(runner)

    async def tokenizer_fn(method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "tokenize":
            tokens = runner.encode(body["prompt"])
            return {"count": len(tokens), "max_model_len": runner.max_context, "tokens": tokens}
        return {"prompt": runner.tokenizer.decode(body["tokens"])}

    return make_app(backend.generate_stream, runner, tokenizer_fn=tokenizer_fn)


def _validator(document: dict[str, Any], ref: str) -> jsonschema.Draft202012Validator:
    """A validator of one schema of `document`, its ``#/components/...`` refs resolved inside the document."""
    registry = Registry().with_resource("urn:doc", Resource.from_contents(document, default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator({"$ref": "urn:doc" + ref}, registry=registry)


def test_every_post_route_documents_its_body_its_answer_and_its_error(app) -> None:
    document = app.openapi()
    for path, (model, response, streams) in OPERATIONS.items():
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["required"] is True
        body_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body_ref == f"#/components/schemas/{model.__name__}"
        properties = document["components"]["schemas"][model.__name__]["properties"]
        assert set(properties) == set(model.model_fields)  # every field a client may send, no more
        ok = operation["responses"]["200"]["content"]
        assert ok["application/json"]["schema"]["$ref"] == f"#/components/schemas/{response}"
        assert ("text/event-stream" in ok) == streams
        assert {"4XX", "5XX"} <= set(operation["responses"])


async def _post(app, path: str, body: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=mounted(app), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://llm") as http:
        return await http.post("/v1" + path, json=body)


@pytest.mark.parametrize(("path", "body", "schema"), [
    ("/completions", {"prompt": "Hello", "max_tokens": 3, "logprobs": 2}, "CompletionResponse"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}, "ChatCompletionResponse"),
    ("/tokenize", {"prompt": "Hello there"}, "TokenizeResponse"),
    ("/detokenize", {"tokens": [5, 6, 7]}, "DetokenizeResponse"),
])
async def test_real_answers_fit_the_documented_schemas(app, path: str, body: dict[str, Any], schema: str) -> None:
    document = app.openapi()
    answer = await _post(app, path, body)
    assert answer.status_code == 200, answer.text
    _validator(document, f"#/components/schemas/{schema}").validate(answer.json())
    request_schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    _validator(document, request_schema).validate(body)  # what we sent is what the document allows


@pytest.mark.parametrize(("path", "body"), [
    ("/completions", {"prompt": "Hello", "max_tokens": -1}),
    ("/completions", {"prompt": "Hello", "model": "someone-else"}),
    ("/chat/completions", {"messages": "not a list"}),
    ("/tokenize", {"nothing": True}),
])
async def test_refusals_fit_the_documented_error(app, path: str, body: dict[str, Any]) -> None:
    answer = await _post(app, path, body)
    assert 400 <= answer.status_code < 500, answer.text
    _validator(app.openapi(), "#/components/schemas/Error").validate(answer.json())
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a body without an error is refused
        _validator(app.openapi(), "#/components/schemas/Error").validate({"detail": "not ours"})
