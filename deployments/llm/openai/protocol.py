"""OpenAI's completions and chat request bodies: validation, and conversion to backend requests.

Pure (pydantic only): the FastAPI routes in `deployments.llm.openai.routes` parse
a body with `CompletionRequest` / `ChatCompletionRequest`; then
`deployments.llm.openai.backend_requests` checks it against the served model and
fans it out into the `LLMRequest`s the engine's ``generate_stream`` takes.

Why so strict: a client that sends a feature we do not implement (penalties,
logit_bias, parallel tool calls, ...) must hear so with a 400 that names the parameter; a
silently ignored parameter returns plausible but wrong answers. Unknown fields
are refused like OpenAI does ("Unrecognized request argument supplied").
Validators raise `PydanticCustomError` whose *type* becomes the OpenAI error
``code`` and whose ``ctx["param"]``, when present, the error's ``param``
(`deployments.llm.openai.errors.from_validation_errors`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cache_actors.engine.tool_calls import MAX_TOOLS, TOOL_CHOICE_MODES, TOOL_NAME
from deployments.common.error_codes import code_for_status

MAX_N = 8
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit; vLLM's default cap)
MAX_TOOLS_BYTES = 60 * 1024  # under the backend's limit on a compiled format (tools are one)
MAX_STOP = 4
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1 - MAX_N  # seed + i must stay a valid torch seed
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Accepted roles and what they become (chat templates rarely know ``developer``)."""
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OpenAIError(Exception):
    """An error answered with OpenAI's body ``{"error": {message, type, param, code}}``."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        # Clients branch on ``code``; one is always there, the status's when the site names none.
        self.code = code or code_for_status(status_code)
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class RequestRefused(ValueError):
    """What a backend may raise (instead of a bare ValueError) to name the refused parameter.

    Picklable, so it crosses a Serve handle; the ingress answers 400 with
    ``param`` and ``code`` (a bare ValueError gives ``param: null``).
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refused, (str(self), self.param, self.code))


def _rebuild_refused(message: str, param: str | None, code: str | None) -> RequestRefused:
    return RequestRefused(message, param=param, code=code)


def _invalid(message: str, *, param: str | None = None, code: str = "invalid_value") -> PydanticCustomError:
    return PydanticCustomError(code, message, {"param": param} if param else None)


def _unsupported(param: str, what: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", f"'{param}' is not supported by this server: {what}",
                               {"param": param})


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = (low < value if low_open else low <= value) and value <= high and not math.isnan(value)
    if not ok:
        bracket = "(" if low_open else "["
        raise _invalid(f"Invalid '{name}': {value!r}; expected a value in {bracket}{low:g}, {high:g}].", param=name)


# What the fields typed Any (their validators normalise several shapes) accept, for the OpenAPI document:
# the shapes OpenAI's API reference gives, so /docs and a fuzzer send what a client would.
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
PROMPT_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
    _TOKENS, {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": 1}]}
STOP_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP},
                                         {"type": "null"}]}
MESSAGES_SCHEMA: dict[str, Any] = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"], "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
        "name": {"type": "string"}, "tool_call_id": {"type": "string"}, "tool_calls": {"type": "array"}}}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # the SDK may send it; there is nothing to obfuscate here
    continuous_usage_stats: bool | None = None  # vLLM's: usage in every chunk (load generators read it)


class _Common(BaseModel):
    """Fields shared by both endpoints (after validation: normalized, defaults still None)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: Any = Field((), json_schema_extra=STOP_SCHEMA)
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: Any = None
    user: str | None = None
    store: bool | None = None
    logit_bias: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool | None = None  # vLLM's extension: generate past EOS (exact output lengths for benchmarks)
    min_tokens: int | None = None  # vLLM's extension: no EOS or stop before this many tokens

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise _invalid(f"Invalid 'min_tokens': {value}; it must be at least 0.", param="min_tokens")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _positive_max_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise _invalid(f"Invalid 'max_tokens': {value}; it must be at least 1.", param="max_tokens")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None:
            _check_range("temperature", value, 0.0, 2.0)
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        if value is not None:
            _check_range("top_p", value, 0.0, 1.0, low_open=True)
        return value

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_N:
            raise _invalid(f"Invalid 'n': {value}; this server generates 1 to {MAX_N} choices per request.",
                           param="n")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not MIN_SEED <= value <= MAX_SEED:
            raise _invalid(f"Invalid 'seed': {value}; expected a 64-bit signed integer.", param="seed")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("Invalid 'stop': expected a string or a list of strings.", param="stop", code="invalid_type")
        if len(stops) > MAX_STOP:
            raise _invalid(f"Invalid 'stop': {len(stops)} sequences; at most {MAX_STOP} are allowed.", param="stop")
        if any(s == "" for s in stops):
            raise _invalid("Invalid 'stop': stop sequences must not be empty strings.", param="stop")
        return tuple(stops)

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else check_response_format(value)

    @field_validator("store")
    @classmethod
    def _no_store(cls, value: bool | None) -> bool | None:
        if value:
            raise _unsupported("store", "completions are not stored")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise _unsupported("logit_bias", "token biases are not applied")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float | None, info: Any) -> float | None:
        if value is not None and value != 0:
            raise _unsupported(info.field_name, "only 0 is accepted")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise _invalid("The 'stream_options' parameter is only allowed when 'stream' is true.",
                           param="stream_options")
        return self

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage in every chunk (vLLM's ``continuous_usage_stats``; it needs ``include_usage`` as there)."""
        return self.include_usage and bool(self.stream_options and self.stream_options.continuous_usage_stats)


def check_response_format(value: Any) -> dict[str, Any]:
    """Shape-check OpenAI's ``response_format`` and return it unchanged (the backend compiles schemas)."""
    param = "response_format"
    if not isinstance(value, dict):
        raise _invalid("Invalid 'response_format': expected an object.", param=param, code="invalid_type")
    kind = value.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise _invalid(f"Invalid 'response_format.type': {kind!r}; expected one of {', '.join(RESPONSE_FORMAT_TYPES)}.",
                       param="response_format.type")
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    extra = sorted(set(value) - allowed)
    if extra:
        raise _invalid(f"Unrecognized argument in 'response_format': {extra[0]}", param=f"response_format.{extra[0]}")
    if kind != "json_schema":
        return value
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise _invalid("'response_format.json_schema' is required (an object with 'name' and 'schema') "
                       "when type is 'json_schema'.", param="response_format.json_schema")
    extra = sorted(set(spec) - {"name", "schema", "strict", "description"})
    if extra:
        raise _invalid(f"Unrecognized argument in 'response_format.json_schema': {extra[0]}",
                       param=f"response_format.json_schema.{extra[0]}")
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise _invalid("Invalid 'response_format.json_schema.name': 1-64 letters, digits, '_' or '-'.",
                       param="response_format.json_schema.name")
    if "schema" in spec and not isinstance(spec["schema"], dict):
        raise _invalid("Invalid 'response_format.json_schema.schema': expected a JSON Schema object.",
                       param="response_format.json_schema.schema", code="invalid_type")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise _invalid("Invalid 'response_format.json_schema.strict': expected a boolean.",
                       param="response_format.json_schema.strict", code="invalid_type")
    return value


class CompletionRequest(_Common):
    """``POST /v1/completions``; ``prompt`` ends up a single string or a list of token ids."""

    prompt: Any = Field(json_schema_extra=PROMPT_SCHEMA)
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> str | list[int]:
        """A string, ``[string]``, token ids ``[int, ...]`` or ``[[int, ...]]``: one prompt per request."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]
        if isinstance(value, list):
            if not value:
                raise _invalid("Invalid 'prompt': the prompt is empty.", param="prompt")
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
                raise _invalid("Invalid 'prompt': this server takes one prompt per request: a string, or a list "
                               "of token ids (non-negative integers).", param="prompt")
            return value
        if not isinstance(value, str):
            raise _invalid("Invalid 'prompt': expected a string or a list of token ids.", param="prompt",
                           code="invalid_type")
        if not value:
            raise _invalid("Invalid 'prompt': the prompt is empty.", param="prompt")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_LOGPROBS:
            raise _invalid(f"Invalid 'logprobs': {value}; expected 0 to {MAX_LOGPROBS}.", param="logprobs")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise _unsupported("suffix", "insertion after a suffix is not implemented")
        return value

    @property
    def logprobs_top(self) -> int | None:
        return self.logprobs

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.choices:
            raise _unsupported("best_of", f"only best_of == n ({self.choices}) is accepted")
        return self


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``; ``messages`` ends up ``[{"role", "content"}]`` with string content
    (plus ``tool_calls`` on assistant turns that called tools, ``tool_call_id`` on ``tool`` turns)."""

    messages: Any = Field(json_schema_extra=MESSAGES_SCHEMA)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None  # after validation: None (no tools), "auto", "required", "none" or a tool's name
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: Any) -> list[dict[str, str]]:
        if not isinstance(value, list):
            raise _invalid("Invalid 'messages': expected an array of messages.", param="messages", code="invalid_type")
        if not value:
            raise _invalid("Invalid 'messages': empty array. Expected at least one message.", param="messages")
        return [_message(i, m) for i, m in enumerate(value)]

    @field_validator("max_completion_tokens")
    @classmethod
    def _positive_max_completion_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise _invalid(f"Invalid 'max_completion_tokens': {value}; it must be at least 1.",
                           param="max_completion_tokens")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_LOGPROBS:
            raise _invalid(f"Invalid 'top_logprobs': {value}; expected 0 to {MAX_LOGPROBS}.", param="top_logprobs")
        return value

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("Invalid 'top_logprobs': 'logprobs' must be set to true if 'top_logprobs' is used.",
                           param="top_logprobs")
        return self

    @property
    def logprobs_top(self) -> int | None:
        """Alternatives per token the engine reports (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[Any] | None) -> list[dict[str, Any]] | None:
        return None if value is None else check_tools(value)

    @field_validator("functions", "function_call")
    @classmethod
    def _no_functions(cls, value: Any, info: Any) -> Any:
        if value is not None:
            raise _unsupported(info.field_name, "the deprecated function-calling parameters are not accepted; "
                                                "use 'tools' and 'tool_choice'")
        return value

    @field_validator("parallel_tool_calls")
    @classmethod
    def _one_call_per_turn(cls, value: bool | None) -> bool | None:
        if value:
            raise _unsupported("parallel_tool_calls", "the model makes at most one tool call per turn; "
                                                      "send false or leave it out")
        return value

    @model_validator(mode="after")
    def _tool_choice(self) -> ChatCompletionRequest:
        names = [tool["function"]["name"] for tool in self.tools or ()]
        self.tool_choice = check_tool_choice(self.tool_choice, names)
        if self.tools and self.response_format is not None and self.tool_choice != "none" \
                and self.response_format.get("type") != "text":
            raise _unsupported("response_format", "a response_format together with tools (unless tool_choice "
                                                  "is 'none')")
        return self


def check_tools(value: list[Any]) -> list[dict[str, Any]]:
    """OpenAI's ``tools``: function tools with unique names and object schemas (compiled by the backend)."""
    if not value:
        raise _invalid("Invalid 'tools': empty array. Expected at least one tool, or leave 'tools' out.", param="tools")
    if len(value) > MAX_TOOLS:
        raise _invalid(f"Invalid 'tools': {len(value)} tools; at most {MAX_TOOLS} are allowed.", param="tools")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise _invalid("Invalid 'tools': NaN or infinite numbers are not JSON.", param="tools") from None
    if size > MAX_TOOLS_BYTES:
        raise _invalid(f"Invalid 'tools': {size} bytes of JSON; at most {MAX_TOOLS_BYTES} are allowed (their "
                       "schemas are compiled into a grammar).", param="tools")
    seen: set[str] = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _invalid(f"Invalid '{where}': expected {{'type': 'function', 'function': {{...}}}}.",
                           param=f"{where}.type")
        extra = sorted(set(tool) - {"type", "function"})
        if extra:
            raise _invalid(f"Unrecognized argument in '{where}': {extra[0]}", param=f"{where}.{extra[0]}")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _invalid(f"Invalid '{where}.function': expected an object.", param=f"{where}.function",
                           code="invalid_type")
        extra = sorted(set(function) - {"name", "description", "parameters", "strict"})
        if extra:
            raise _invalid(f"Unrecognized argument in '{where}.function': {extra[0]}",
                           param=f"{where}.function.{extra[0]}")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise _invalid(f"Invalid '{where}.function.name': 1-64 letters, digits, '_' or '-'.",
                           param=f"{where}.function.name")
        if name in seen:
            raise _invalid(f"Invalid '{where}.function.name': {name!r} is used by two tools.",
                           param=f"{where}.function.name")
        seen.add(name)
        if "description" in function and not isinstance(function["description"], str):
            raise _invalid(f"Invalid '{where}.function.description': expected a string.",
                           param=f"{where}.function.description", code="invalid_type")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _invalid(f"Invalid '{where}.function.parameters': expected a JSON Schema object.",
                           param=f"{where}.function.parameters", code="invalid_type")
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            raise _invalid(f"Invalid '{where}.function.strict': expected a boolean.",
                           param=f"{where}.function.strict", code="invalid_type")
    return value


def check_tool_choice(value: Any, names: list[str]) -> str | None:
    """``tool_choice`` as ``auto`` / ``required`` / ``none`` / a tool's name (None when there are no tools)."""
    if value is None:
        return "auto" if names else None
    if isinstance(value, dict):
        function = value.get("function")
        if value.get("type") != "function" or set(value) - {"type", "function"} or not isinstance(function, dict) \
                or set(function) != {"name"} or not isinstance(function["name"], str):
            raise _invalid("Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': <tool name>}}.", param="tool_choice")
        choice = function["name"]
        if choice not in names:
            raise _invalid(f"Invalid 'tool_choice': function {choice!r} is not among the tools.", param="tool_choice")
        return choice
    if value not in TOOL_CHOICE_MODES:
        raise _invalid(f"Invalid 'tool_choice': {value!r}; expected 'none', 'auto', 'required' or a named function.",
                       param="tool_choice")
    if not names and value != "none":
        raise _invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                       param="tool_choice")
    return value


def _message(index: int, message: Any) -> dict[str, Any]:
    """One message normalized to ``{"role", "content"}``, plus ``tool_calls`` or ``tool_call_id`` where given."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _invalid(f"Invalid '{where}': expected an object.", param=where, code="invalid_type")
    role = message.get("role")
    if role == "function":
        raise _unsupported(f"{where}.role", "role 'function' is deprecated; use 'tool' messages")
    if role == "tool":
        return _tool_message(where, message)
    if role not in CHAT_ROLES:
        raise _invalid(f"Invalid '{where}.role': {role!r}; expected one of {', '.join(CHAT_ROLES)}, tool.",
                       param=f"{where}.role")
    if message.get("function_call"):
        raise _unsupported(f"{where}.function_call", "the deprecated function_call is not accepted; use tool_calls")
    extra = sorted(set(message) - {"role", "content", "name", "tool_calls", "function_call", "refusal"})
    if extra:
        raise _invalid(f"Unrecognized argument in '{where}': {extra[0]}", param=f"{where}.{extra[0]}")
    if "name" in message and not isinstance(message["name"], str):
        raise _invalid(f"Invalid '{where}.name': expected a string.", param=f"{where}.name", code="invalid_type")
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise _invalid(f"Invalid '{where}.tool_calls': only assistant messages carry tool calls.",
                       param=f"{where}.tool_calls")
    if calls:  # an assistant turn that called tools may have no content
        content = message.get("content")
        text = "" if content is None else _content(where, content)
        return {"role": "assistant", "content": text, "tool_calls": _tool_calls(where, calls)}
    return {"role": CHAT_ROLES[role], "content": _content(where, message.get("content"))}


def _tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _invalid(f"Invalid '{where}.tool_calls': expected an array.", param=f"{where}.tool_calls",
                       code="invalid_type")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(call.get("id"), str) or call.get("type", "function") != "function" \
                or not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not TOOL_NAME.match(function["name"]) or not isinstance(function.get("arguments"), str):
            raise _invalid(f"Invalid '{at}': expected {{'id': str, 'type': 'function', 'function': "
                           "{'name': str, 'arguments': <JSON text>}}.", param=at)
        try:
            json.loads(function["arguments"])
        except ValueError:
            raise _invalid(f"Invalid '{at}.function.arguments': not JSON text.", param=f"{at}.function.arguments") \
                from None
        out.append({"id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": function["arguments"]}})
    return out


def _tool_message(where: str, message: dict[str, Any]) -> dict[str, Any]:
    extra = sorted(set(message) - {"role", "content", "tool_call_id", "name"})
    if extra:
        raise _invalid(f"Unrecognized argument in '{where}': {extra[0]}", param=f"{where}.{extra[0]}")
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid(f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id",
                       code="missing_required_parameter")
    out = {"role": "tool", "tool_call_id": call_id, "content": _content(where, message.get("content"))}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


def _content(where: str, content: Any) -> str:
    """String content, or the text of ``[{"type": "text", "text": ...}]`` parts joined by newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise _invalid(f"Invalid '{where}.content': expected a string or a non-empty array of text parts.",
                       param=f"{where}.content", code="invalid_type")
    texts = []
    for j, part in enumerate(content):
        part_where = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise _unsupported(f"{part_where}.type", f"content part type {kind!r}; only 'text' parts are accepted")
        if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise _invalid(f"Invalid '{part_where}': expected {{'type': 'text', 'text': <string>}}.", param=part_where)
        texts.append(part["text"])
    return "\n".join(texts)
