"""From a validated OpenAI request to the engine's backend requests: limits, defaults, fan-out.

The backend (``LLMServer.generate_stream``) takes one `LLMRequest` per
choice (the one request type, picklable); ``n > 1`` becomes n of them with
seeds ``seed + i``, merged back into one response by the ingress.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache_actors.engine.requests import LLMRequest
from cache_actors.engine.tool_calls import FunctionTool, render_messages, tool_call_format
from deployments.llm.openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /completions


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """What the served model accepts; checked at the ingress before any backend call."""

    model_id: str
    max_tokens_limit: int
    max_context: int | None = None
    default_completion_max_tokens: int = DEFAULT_COMPLETION_MAX_TOKENS


def requested_max_tokens(request: CompletionRequest | ChatCompletionRequest) -> tuple[str, int | None]:
    """The max-tokens parameter the client set (chat: ``max_completion_tokens`` wins) and its value."""
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return "max_completion_tokens", request.max_completion_tokens
    return "max_tokens", request.max_tokens


def check_limits(request: CompletionRequest | ChatCompletionRequest, limits: ServingLimits) -> None:
    """Refuse a model we do not serve (404) and max tokens the server does not allow (400)."""
    if request.model is not None and request.model != limits.model_id:
        raise OpenAIError(404, f"The model `{request.model}` does not exist. This server serves `{limits.model_id}`.",
                          param="model", code="model_not_found")
    if isinstance(request, ChatCompletionRequest) and request.max_tokens is not None:
        _check_max_tokens("max_tokens", request.max_tokens, limits)
    name, value = requested_max_tokens(request)
    if value is not None:
        _check_max_tokens(name, value, limits)


def _check_max_tokens(name: str, value: int, limits: ServingLimits) -> None:
    if value > limits.max_tokens_limit:
        raise OpenAIError(400, f"Invalid '{name}': {value}; this server generates at most "
                               f"{limits.max_tokens_limit} tokens per request.", param=name, code="invalid_value")
    if limits.max_context is not None and value >= limits.max_context:
        raise OpenAIError(400, f"This model's maximum context length is {limits.max_context} tokens; "
                               f"{name}={value} leaves no room for the prompt.", param=name,
                          code="context_length_exceeded")


def to_backend_requests(request: CompletionRequest | ChatCompletionRequest, *, request_id: str,
                        tenant_id: str | None, limits: ServingLimits) -> list[LLMRequest]:
    """One backend request per choice; seeded choices get seeds ``seed + i`` so they differ reproducibly.

    When the client left max tokens out, ``max_new_tokens`` is this server's
    default and ``clamp_max_tokens`` tells the backend to lower it to what fits
    in the context instead of refusing the request.
    """
    _, explicit = requested_max_tokens(request)
    if explicit is not None:
        max_new_tokens = explicit
    elif isinstance(request, CompletionRequest):
        max_new_tokens = min(limits.default_completion_max_tokens, limits.max_tokens_limit)
    else:
        max_new_tokens = limits.max_tokens_limit
    if request.min_tokens and request.min_tokens > max_new_tokens:
        raise OpenAIError(400, f"Invalid 'min_tokens': {request.min_tokens} exceeds the {max_new_tokens} tokens this "
                               "request may generate (max_tokens).", param="min_tokens", code="invalid_value")
    is_chat = isinstance(request, ChatCompletionRequest)
    messages, response_format = (chat_messages(request) if is_chat else (None, request.response_format))
    out: list[LLMRequest] = []
    for i in range(request.choices):
        out.append(LLMRequest.parse({
            "request_id": request_id if request.choices == 1 else f"{request_id}-{i}",
            "prompt": None if is_chat or isinstance(request.prompt, list) else request.prompt,
            "prompt_token_ids": request.prompt if not is_chat and isinstance(request.prompt, list) else None,
            "messages": messages,
            "tenant_id": tenant_id,
            "sampling": {
                "max_new_tokens": max_new_tokens,
                "temperature": 1.0 if request.temperature is None else request.temperature,
                "top_p": 1.0 if request.top_p is None else request.top_p,
                "stop": list(request.stop),
                "seed": None if request.seed is None else request.seed + i,
                "ignore_eos": bool(request.ignore_eos),
                "min_tokens": request.min_tokens or 0,
                "logprobs": request.logprobs_top,
                "prompt_logprobs": prompt_logprobs(request),
            },
            "response_format": response_format,
            "clamp_max_tokens": explicit is None,
            "stream_deltas": bool(request.stream),
        }))
    return out


def prompt_logprobs(request: CompletionRequest | ChatCompletionRequest) -> int | None:
    """What ``echo`` needs from the engine: the prompt's logprobs (with ``logprobs``), or its text (token ids)."""
    if not isinstance(request, CompletionRequest) or not request.echo:
        return None
    if request.logprobs is not None:
        return request.logprobs
    return 0 if isinstance(request.prompt, list) else None


def function_tools(request: ChatCompletionRequest) -> list[FunctionTool]:
    """The request's ``tools`` as the engine's `FunctionTool`s (already shape-checked)."""
    return [FunctionTool(name=t["function"]["name"], description=t["function"].get("description", ""),
                         parameters=t["function"].get("parameters", {"type": "object", "properties": {}}))
            for t in request.tools or ()]


def chat_messages(request: ChatCompletionRequest) -> tuple[list[dict[str, str]], dict | None]:
    """The chat as plain turns (tools written into the system prompt) and the grammar the choice needs."""
    tools = function_tools(request)
    calls = tool_call_format(tools, request.tool_choice or "none")  # None without tools or with choice none
    return render_messages(request.messages, tools), request.response_format if calls is None else calls
