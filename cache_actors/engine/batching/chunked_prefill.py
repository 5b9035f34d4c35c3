"""A prompt longer than one iteration's prefill budget, computed a chunk per iteration.

The batcher prefills between decode steps, so a long prompt prefilled at once
stalls every running sequence for the whole prefill (seconds on a CPU). A
`ChunkedPrefill` computes it in chunks of at most the iteration's budget,
into a scratch row outside the decode batch (the running rows never see a
half-built sequence), and the sequence joins the batch when its last chunk
is done: its KV is then copied into a batch row, one copy of the prompt's
KV, small next to computing it. This is vLLM's and SGLang's chunked prefill
for a batch whose decode steps cannot mix in prefill tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from cache_actors.engine.batching.sequence import Sequence
from cache_actors.core.kv_layout import cache_from_buffer


class ChunkedPrefill:
    """One sequence's prompt, computed ``done`` tokens so far into ``scratch [L, 2, H, max_len, D]``."""

    def __init__(self, seq: Sequence, hashes: list, cached_tokens: int, scratch: torch.Tensor) -> None:
        self.seq = seq
        self.hashes = hashes
        self.cached_tokens = cached_tokens
        self.scratch = scratch
        self.done = cached_tokens
        self.cache: DynamicCache | None = None  # the model's cache after the last chunk

    @property
    def remaining(self) -> int:
        return len(self.seq.prompt_ids) - self.done

    def advance(self, runner, max_tokens: int) -> torch.Tensor | None:  # noqa: ANN001 - a ModelRunner
        """Compute up to ``max_tokens`` more prompt tokens; the last logits once the prompt is complete."""
        end = min(len(self.seq.prompt_ids), self.done + max(1, max_tokens))
        logits, self.cache = runner.prefill(self.seq.prompt_ids[:end], cache_from_buffer(self.scratch, self.done))
        self.done = end
        return logits if self.remaining == 0 else None

    def copy_into(self, row_view: torch.Tensor) -> None:
        """Copy the prompt's KV into a batch row (``[L, 2, H, max_len, D]``)."""
        row_view[:, :, :, : self.done].copy_(self.scratch[:, :, :, : self.done])
