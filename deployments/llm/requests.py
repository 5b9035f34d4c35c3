"""The request of `LLMServer.generate` / `generate_stream`, tokenized for the batcher.

The request itself is `cache_actors.engine.requests.LLMRequest` (the ingress, the
router and the engine share it); handle callers such as business services may
send the same fields as a plain dict, validated by that same model:

- ``prompt`` (str) or ``messages`` ([{role, content}]) or ``prompt_token_ids``;
- ``sampling``: ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
  ``ignore_eos``, ``min_tokens`` (top-level keys of the same names are accepted
  too, for handle callers);
- ``response_format``: OpenAI's ``text`` / ``json_object`` / ``json_schema``, or the
  internal ``tool_call`` format (`cache_actors.engine.tool_calls.tool_call_format`);
- ``tenant_id``, ``request_id``, ``clamp_max_tokens``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cache_actors.engine.batching import SequenceRequest
from cache_actors.engine.prompt_encoder import PromptEncoder
from cache_actors.engine.requests import LLMRequest


def sequence_request(
    request: LLMRequest | Mapping[str, Any], encoder: PromptEncoder, *, default_max_tokens: int, max_model_len: int
) -> SequenceRequest:
    """A `SequenceRequest` for the batcher; ValueError names what is wrong.

    With ``clamp_max_tokens`` (the client set no budget) ``max_new_tokens`` is
    lowered to what fits in ``max_model_len`` instead of refusing the request.
    """
    parsed = LLMRequest.parse(request)
    token_ids = parsed.encode(encoder)  # an empty prompt is refused by the batcher's check
    vocab = len(encoder.tokenizer)
    if parsed.prompt_token_ids is not None and any(t < 0 or t >= vocab for t in token_ids):
        raise ValueError(f"'prompt_token_ids' must be in [0, {vocab})")
    sequence = SequenceRequest.from_request(parsed, token_ids, default_max_new_tokens=default_max_tokens)
    room = max_model_len - len(token_ids)
    if parsed.clamp_max_tokens and 0 < room < sequence.sampling.max_new_tokens:
        sequence.sampling = dataclasses.replace(sequence.sampling, max_new_tokens=room)
    return sequence
