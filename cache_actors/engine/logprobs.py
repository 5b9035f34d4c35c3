"""Log probabilities of generated and prompt tokens, for the OpenAI API's ``logprobs`` and ``echo``.

Evaluation harnesses (lm-eval's loglikelihood tasks) score a continuation
by the prompt's own token logprobs (``echo`` with ``logprobs``); load
generators and users read the generated tokens' logprobs. Both are the
model's raw distribution (log-softmax of the logits before temperature,
top-p or a grammar's mask), as vLLM reports by default, so a constrained or
sampled answer still shows what the model itself thought.

An entry is ``{"token_id", "token", "logprob", "top_logprobs": [{"token_id",
"token", "logprob"}, ...]}``; ``token`` is the id decoded alone (a byte-level
token that splits a UTF-8 character decodes to U+FFFD, as in vLLM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

MAX_TOP_LOGPROBS = 20  # vLLM's default cap (OpenAI's chat API allows 20)
PROMPT_CHUNK_TOKENS = 256  # prompt logprobs are computed this many positions at a time (bounded memory)

TokenText = Callable[[int], str]


def token_entry(logprobs: torch.Tensor, token_id: int, top: int, token_text: TokenText) -> dict[str, Any]:
    """The entry of ``token_id`` from one position's log-probabilities ``[vocab]``."""
    entry: dict[str, Any] = {"token_id": int(token_id), "token": token_text(int(token_id)),
                             "logprob": _finite(float(logprobs[token_id]))}
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        entry["top_logprobs"] = [{"token_id": int(i), "token": token_text(int(i)), "logprob": _finite(float(v))}
                                 for v, i in zip(values.tolist(), ids.tolist())]
    else:
        entry["top_logprobs"] = []
    return entry


def sampled_entry(logits: torch.Tensor, token_id: int, top: int, token_text: TokenText) -> dict[str, Any]:
    """The entry of a sampled token from its position's raw logits."""
    return token_entry(torch.log_softmax(logits.float(), dim=-1), token_id, top, token_text)


@torch.inference_mode()
def prompt_entries(model: Any, token_ids: Sequence[int], top: int, token_text: TokenText,
                   device: torch.device) -> list[dict[str, Any]]:
    """One entry per prompt token; the first has ``logprob`` and ``top_logprobs`` None (nothing predicts it).

    Runs the whole prompt without the KV cache (every position's logits are
    needed, which a cached prefix never computed), ``PROMPT_CHUNK_TOKENS``
    at a time so a long prompt never holds ``len x vocab`` logits at once.
    """
    from transformers import DynamicCache

    ids = list(token_ids)
    entries: list[dict[str, Any]] = [{"token_id": int(ids[0]), "token": token_text(int(ids[0])), "logprob": None,
                                      "top_logprobs": None}]
    cache = DynamicCache()
    for start in range(0, len(ids) - 1, PROMPT_CHUNK_TOKENS):
        piece = ids[start:start + PROMPT_CHUNK_TOKENS]
        out = model(input_ids=torch.tensor([piece], dtype=torch.long, device=device), cache=cache, use_cache=True,
                    logits_to_keep=0)
        cache = out.cache
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        for offset in range(len(piece)):
            target = start + offset + 1
            if target >= len(ids):
                break
            entries.append(token_entry(logprobs[offset], ids[target], top, token_text))
    return entries


def _finite(value: float) -> float:
    """-inf (an impossible token) as the most negative float: JSON has no infinity."""
    return value if value > -3.0e38 else -3.0e38
