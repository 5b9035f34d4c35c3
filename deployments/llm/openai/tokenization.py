"""vLLM's ``/tokenize`` and ``/detokenize``: what harnesses call to size prompts with the served tokenizer.

Bodies as vLLM takes them: ``{"model"?, "prompt", "add_special_tokens"?}`` or
``{"model"?, "messages", "add_generation_prompt"?}`` answer ``{"count",
"max_model_len", "tokens"}``; ``{"model"?, "tokens"}`` answers ``{"prompt"}``.
The ingress validates (pure pydantic here); the replica that holds the
tokenizer does the work (`tokenize_body`, `detokenize_body`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from deployments.llm.openai.protocol import _content, _invalid

if TYPE_CHECKING:  # the ingress validates bodies without loading transformers
    from cache_actors.engine.prompt_encoder import PromptEncoder

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[Any] | None) -> list[dict[str, str]] | None:
        if value is None:
            return None
        out = []
        for i, message in enumerate(value):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _invalid(f"Invalid '{where}': expected {{'role': str, 'content': ...}}.", param=where)
            out.append({"role": message["role"], "content": _content(where, message.get("content"))})
        return out

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise _invalid("Give exactly one of 'prompt' or 'messages'.", param="prompt")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    tokens: list[int]

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: list[int]) -> list[int]:
        if len(value) > MAX_DETOKENIZE_TOKENS or any(t < 0 for t in value):
            raise _invalid(f"Invalid 'tokens': expected at most {MAX_DETOKENIZE_TOKENS} non-negative token ids.",
                           param="tokens")
        return value


def tokenize_body(encoder: PromptEncoder, body: dict[str, Any], *, max_model_len: int) -> dict[str, Any]:
    """``/tokenize`` on the replica: the ids the model would see (a chat through its template, as served)."""
    if body.get("messages") is not None:
        tokens = encoder.encode_chat(body["messages"], add_generation_prompt=body.get("add_generation_prompt", True))
    else:
        tokens = encoder.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
    return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}


def detokenize_body(encoder: PromptEncoder, body: dict[str, Any]) -> dict[str, Any]:
    """``/detokenize`` on the replica; ids outside the vocabulary are a ValueError (a 400)."""
    vocab = len(encoder.tokenizer)
    bad = [t for t in body["tokens"] if t >= vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside this model's vocabulary [0, {vocab})")
    return {"prompt": encoder.tokenizer.decode(body["tokens"])}
