"""Greedy decode steps over a `RaggedKVBuffer`, as the continuous batcher runs them (shared by the engine tests)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer


def greedy_steps(forward: Callable[..., Any], kv: RaggedKVBuffer, logits: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """``steps`` decode steps of every active row from its prefill ``logits``; each step's last logits ``[rows, vocab]``."""
    out_steps = []
    with torch.inference_mode():
        last = logits.argmax(-1)[:, None]
        for _ in range(steps):
            cache, positions, mask = kv.decode_inputs()
            out = forward(input_ids=last, cache=cache, position_ids=positions, attention_mask=mask, logits_to_keep=1)
            kv.advance()
            out_steps.append(out.logits[:, -1])
            last = out.logits[:, -1].argmax(-1)[:, None]
    return out_steps
