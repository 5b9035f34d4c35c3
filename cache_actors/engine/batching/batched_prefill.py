"""Several prompts prefilled in one forward, each into its own batch row on top of its cached prefix.

Prompts that arrive together (16 clients at once, a fan-out of ``n``
choices, an agent's parallel calls) were prefilled one forward each. On a
CPU a forward reads every weight once whatever its row count, so a
100-token prompt costs about what a whole decode step of the batch costs,
and 16 of them cost 16 steps. One right-padded forward over all of them
reads the weights once (vLLM's and SGLang's batched prefill); each row's
tokens attend to its own prefix and earlier tokens only
(`RaggedKVBuffer.extend_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer


@torch.inference_mode()
def prefill_rows(model: Callable[..., Any], kv: RaggedKVBuffer, first_row: int, prompts: Sequence[Sequence[int]],
                 starts: Sequence[int]) -> torch.Tensor:
    """Feed ``prompts[i][starts[i]:]`` to row ``first_row + i`` (which holds its first ``starts[i]`` tokens).

    ``model``: the runner's forward (`ModelRunner.forward`) or a Transformers model.

    Returns each prompt's last logits ``[n, vocab]``; the rows' lengths are
    set to their prompts'. Only the distinct last positions reach the LM head.
    """
    counts = [len(prompt) - start for prompt, start in zip(prompts, starts)]
    if not prompts or min(counts) < 1:
        raise ValueError("every prompt needs at least one token after its cached prefix")
    device = kv.buffer.device
    ids = torch.zeros((len(prompts), max(counts)), dtype=torch.long, device=device)
    for row, (prompt, start) in enumerate(zip(prompts, starts)):
        ids[row, : counts[row]] = torch.tensor(prompt[start:], dtype=torch.long, device=device)
    cache, positions, mask = kv.extend_inputs(first_row, list(starts), counts)
    keep = sorted({count - 1 for count in counts})
    out = model(input_ids=ids, cache=cache, position_ids=positions, attention_mask=mask, use_cache=True,
                logits_to_keep=torch.tensor(keep, device=device))
    column = torch.tensor([keep.index(count - 1) for count in counts], device=device)
    for row, prompt in enumerate(prompts):
        kv.set_length(first_row + row, len(prompt))
    return out.logits[torch.arange(len(prompts), device=device), column]
