"""The request dict of `LLMServer.generate` / `generate_stream`, checked and tokenized.

Plain dicts cross the Serve handle (services, the OpenAI ingress and the
router all build them), so this is the one place that says what they hold:

- ``prompt`` (str) or ``messages`` ([{role, content}]) or ``prompt_token_ids``;
- ``sampling``: ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``
  (top-level keys of the same names are accepted too, for handle callers);
- ``response_format``: OpenAI's ``text`` / ``json_object`` / ``json_schema``;
- ``tenant_id``, ``request_id``.
"""

from __future__ import annotations

from typing import Any, Mapping

from cache_actors.batching import SequenceRequest
from cache_actors.prompt_encoder import PromptEncoder
from cache_actors.requests import parse_sampling

_SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "stop", "seed")


def parse_llm_request(request: Any, encoder: PromptEncoder, *, default_max_tokens: int) -> SequenceRequest:
    """A `SequenceRequest` for the batcher; ValueError names what is wrong."""
    if not isinstance(request, Mapping):
        raise ValueError(f"an LLM request must be a dict, got {type(request).__name__}")
    given = [key for key in ("prompt", "messages", "prompt_token_ids") if request.get(key) is not None]
    if len(given) != 1:
        raise ValueError("an LLM request needs exactly one of 'prompt', 'messages' or 'prompt_token_ids'")
    messages = request.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
        ):
            raise ValueError("'messages' must be a non-empty list of {'role': str, 'content': str}")
    ids = request.get("prompt_token_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)):
        raise ValueError("'prompt_token_ids' must be a list of integers")
    token_ids = encoder.encode_request(request)  # an empty prompt is refused by the batcher's check
    vocab = len(encoder.tokenizer)
    if ids is not None and any(t < 0 or t >= vocab for t in token_ids):
        raise ValueError(f"'prompt_token_ids' must be in [0, {vocab})")
    sampling = request.get("sampling")
    if sampling is None:
        sampling = {key: request[key] for key in _SAMPLING_KEYS if key in request}
    response_format = request.get("response_format")
    if response_format is not None and not isinstance(response_format, Mapping):
        raise ValueError("'response_format' must be an object")
    tenant = request.get("tenant_id")
    if tenant is not None and not isinstance(tenant, str):
        raise ValueError("'tenant_id' must be a string")
    return SequenceRequest(
        token_ids=token_ids,
        sampling=parse_sampling(sampling, default_max_new_tokens=default_max_tokens),
        tenant_id=tenant,
        response_format=response_format,
        request_id=str(request.get("request_id") or ""),
    )
