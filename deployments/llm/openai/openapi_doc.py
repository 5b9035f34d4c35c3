"""The OpenAPI document of the OpenAI app: the bodies its routes parse by hand, and what they answer.

The routes read their JSON themselves (`routes.parse_body`: a client that
forgets ``Content-Type`` is still understood), so FastAPI sees no body
parameter and would document none. Without them ``/docs`` shows nothing to
send and a fuzzer (schemathesis, in tests/fuzz) only ever sends empty bodies.
Here each operation gets its request body (the same pydantic models that
validate it, as JSON schema), its 200 response (JSON, or server-sent events
with ``stream: true``) and its error body. The error schema is the part
OpenAI's body (``{"error": {message, type, param, code}}``) shares with the
gateway's uniform one (``{"error": {code, message, request_id}}``), since the
gateway answers credentials, scope and rate limits before this app does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from deployments.llm.openai.protocol import ChatCompletionRequest, CompletionRequest
from deployments.llm.openai.tokenization import DetokenizeRequest, TokenizeRequest

_REF = "#/components/schemas/"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
        "code": {"type": ["string", "null"]}, "request_id": {"type": ["string", "null"]}}}},
}

_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"], "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"},
    "prompt_tokens_details": {"type": ["object", "null"]}}}


def _completion_response(obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"], "properties": {
        "id": {"type": "string"}, "object": {"const": obj}, "created": {"type": "integer"},
        "model": {"type": "string"}, "system_fingerprint": {"type": ["string", "null"]},
        "choices": {"type": "array", "items": {"type": "object", "required": ["index", "finish_reason", *choice],
                                               "properties": {"index": {"type": "integer"},
                                                              "finish_reason": {"type": ["string", "null"]},
                                                              "logprobs": {"type": ["object", "null"]}, **choice}}},
        "usage": _USAGE}}


RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "CompletionResponse": _completion_response("text_completion", {"text": {"type": "string"}}),
    "ChatCompletionResponse": _completion_response("chat.completion", {"message": {"type": "object"}}),
    "TokenizeResponse": {"type": "object", "required": ["tokens", "count", "max_model_len"], "properties": {
        "tokens": {"type": "array", "items": {"type": "integer"}}, "count": {"type": "integer"},
        "max_model_len": {"type": ["integer", "null"]}}},
    "DetokenizeResponse": {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    "Error": ERROR_SCHEMA,
}

#: path -> (request body model, 200 response schema name, streams with ``stream: true``)
OPERATIONS: dict[str, tuple[type[BaseModel], str, bool]] = {
    "/completions": (CompletionRequest, "CompletionResponse", True),
    "/chat/completions": (ChatCompletionRequest, "ChatCompletionResponse", True),
    "/tokenize": (TokenizeRequest, "TokenizeResponse", False),
    "/detokenize": (DetokenizeRequest, "DetokenizeResponse", False),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}}}


def describe_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's, for the app's own paths) with the request bodies and responses above; in place."""
    refs, definitions = models_json_schema([(model, "validation") for model, _, _ in OPERATIONS.values()],
                                           ref_template=_REF + "{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(definitions.get("$defs", {}))
    schemas.update(RESPONSE_SCHEMAS)
    for path, (model, response, streams) in OPERATIONS.items():
        operation = document.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": refs[(model, "validation")]}}}
        ok: dict[str, Any] = {"application/json": {"schema": {"$ref": _REF + response}}}
        if streams:
            ok["text/event-stream"] = {"schema": {"type": "string", "description": "`data: {chunk}` events, then "
                                                                                    "`data: [DONE]`"}}
        operation["responses"] = {
            "200": {"description": "The result" + (" (server-sent events with `stream: true`)" if streams else ""),
                    "content": ok},
            "4XX": _error("The request is refused: invalid body, unknown model, over a limit, no credentials"),
            "5XX": _error("The model is busy or unavailable (503 with Retry-After): retry later"),
        }
    return document


def document_bodies(app: FastAPI) -> None:
    """Make `app.openapi()` include `describe_bodies` (built once, on the first request for the document)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_bodies(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
