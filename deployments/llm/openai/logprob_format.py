"""The engine's logprob entries in OpenAI's two shapes.

Completions (the legacy shape lm-eval reads): ``{"tokens", "token_logprobs",
"top_logprobs", "text_offset"}``, parallel lists, with ``None`` for the first
prompt token under ``echo`` (nothing predicts it). Chat: ``{"content": [{"token",
"logprob", "bytes", "top_logprobs": [...]}], "refusal": None}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Entry = dict[str, Any]


def completion_logprobs(entries: Sequence[Entry], *, text_offset: int = 0) -> dict[str, Any]:
    """``entries`` as the completions shape; offsets count characters of the returned text from ``text_offset``."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = text_offset
    for entry in entries:
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        top = entry["top_logprobs"]
        top_logprobs.append(None if top is None else {alt["token"]: alt["logprob"] for alt in top})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def chat_logprobs(entries: Sequence[Entry]) -> dict[str, Any]:
    """``entries`` as the chat shape."""
    return {"content": [_chat_entry(entry) for entry in entries], "refusal": None}


def _chat_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {"token": entry["token"], "logprob": entry["logprob"], "bytes": list(entry["token"].encode("utf-8")),
            "top_logprobs": [{"token": alt["token"], "logprob": alt["logprob"],
                              "bytes": list(alt["token"].encode("utf-8"))} for alt in entry["top_logprobs"]]}
