"""Attention for `LeanLlama`: the masks of one forward, built once, and the SDPA call for each shape.

Three shapes reach attention on the serving path:

- a fresh prompt (no past, no mask): SDPA with ``is_causal``;
- new tokens on top of KV already held (a cached prefix, a chunk of a long
  prompt, several prompts prefilled together): SDPA with a mask;
- one new token per row (a decode step): two matmuls and a softmax
  (`attend_decode`).

With our kernel (`attention_kernel`, float32 and 64-dim heads) the first two
shapes, when no mask was given, run its causal mode, a given mask its bias
mode, and decode steps its `decode`.

For the masked prefill, in float32, the forward builds the mask once as an
additive bias for every layer, with the query heads that share a KV head
stacked along the query axis (`PrefillBias`). PyTorch's CPU flash kernel
then runs one attention per KV head over ``groups x width`` queries, not one
per query head over ``width``: fewer, larger blocks, each KV block read once
per group. It also skips the boolean-to-float conversion SDPA makes of a
boolean mask in every layer. Measured on this project's 2-core Xeon (one
layer, 65 queries over 2,049 keys): SmolLM2's 9 query and 3 KV heads 2.33 ->
1.85 ms, 512 queries 13.4 -> 12.1 ms; the 24M Llama's 8 and 4 heads 2.07 ->
1.95 and 11.8 -> 10.7 ms. The result equals the ungrouped call to float
rounding (~1e-7: the kernel blocks the queries differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from cache_actors.engine.attention_kernel import AttentionKernel


@dataclass(frozen=True, slots=True)
class PrefillBias:
    """A boolean ``[rows, 1, width, kv]`` prefill mask as one additive float32 bias, query heads grouped.

    ``bias`` is ``[rows, 1, groups * width, kv]``: the mask repeated once per
    query head of a group, 0 where attended and -inf elsewhere (what SDPA
    makes of a boolean mask itself, so a row with nothing to attend is
    handled alike).
    """

    bias: torch.Tensor
    groups: int

    @classmethod
    def build(cls, mask: torch.Tensor, groups: int) -> PrefillBias:
        rows, _, width, kv = mask.shape
        grouped = mask[:, :, None].expand(rows, 1, groups, width, kv).reshape(rows, 1, groups * width, kv)
        return cls(additive_bias(grouped), groups)


def additive_bias(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as 0 where attended and -inf elsewhere (what softmax adds)."""
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask, float("-inf"))


def causal_mask(attention_mask: torch.Tensor | None, width: int, past: int,
                device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """``(boolean 4D mask or None, is_causal)`` of a forward of ``width`` tokens after ``past`` held ones."""
    if attention_mask is not None:
        if attention_mask.dim() != 4 or attention_mask.dtype != torch.bool:
            raise ValueError("the lean forward takes a 4D boolean attention mask (or None: causal)")
        return attention_mask, False
    if width == 1 or past == 0:
        return None, width > 1
    queries = torch.arange(width, device=device) + past
    return (torch.arange(past + width, device=device)[None, :] <= queries[:, None])[None, None], False


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, causal: bool,
           *, scale: float, num_kv_heads: int, prefill_bias: PrefillBias | None = None,
           kernel: AttentionKernel | None = None, offset_causal: bool = False) -> torch.Tensor:
    """``[rows, heads, width, dim]``: SDPA (or ``kernel``, `attention_kernel`) over the KV heads ``query``'s heads share.

    ``offset_causal``: ``mask`` is plain causal after the keys held before
    these ``width`` tokens, which the kernel computes without it.
    """
    rows, heads, width, dim = query.shape
    groups = heads // num_kv_heads
    own = kernel is not None and width > 1 and kernel.fits(query, keys, values)
    if own and (offset_causal or (causal and mask is None)):  # new tokens after held ones, or a fresh prompt
        stacked = query.reshape(rows, num_kv_heads, groups * width, dim)
        return kernel.causal(stacked, keys, values, width, scale).view(rows, heads, width, dim)
    if prefill_bias is not None:  # built for forwards of 2 tokens or more only
        stacked = query.reshape(rows, num_kv_heads, groups * width, dim)
        if own:
            return kernel.masked(stacked, keys, values, prefill_bias.bias, scale).view(rows, heads, width, dim)
        out = F.scaled_dot_product_attention(stacked, keys, values, attn_mask=prefill_bias.bias, scale=scale)
        return out.view(rows, heads, width, dim)
    if groups > 1 and width == 1 and mask is not None:  # Transformers' pack_gqa (without a mask: enable_gqa)
        packed = query.reshape(rows, num_kv_heads, groups, dim)
        out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=scale)
        return out.reshape(rows, heads, 1, dim)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale,
                                          is_causal=causal, enable_gqa=groups > 1)


def attend_decode(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, *,
                  scale: float, num_kv_heads: int, kernel: AttentionKernel | None = None) -> torch.Tensor:
    """One new token per row over its masked KV: two batched matmuls and a softmax, query heads grouped per KV head.

    Why not SDPA: for one query token per row PyTorch's CPU flash kernel
    is mostly set-up. Measured on this project's 2-core machine (16 rows
    of 64-124 tokens, 8 query and 4 KV heads, caches cold as in a real
    step): 408 us per layer with SDPA and a boolean mask, 233 us here;
    a whole 16-row decode step of the 24M Llama 13-14 -> 11-12 ms. The
    result equals SDPA's to float rounding (~4e-7), the same greedy tokens.
    float32 only: in bf16 or fp16 SDPA accumulates the softmax in float32 and this would not.
    With ``kernel`` (float32, 64-dim heads) the step is its `AttentionKernel.decode`, ~3x faster again.
    """
    rows, heads, _, dim = query.shape
    grouped = query.reshape(rows, num_kv_heads, heads // num_kv_heads, dim)
    if kernel is not None and kernel.fits(query, keys, values):
        return kernel.decode(grouped, keys, values, bias, scale).view(rows, heads, 1, dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(scale).add_(bias)
    out = torch.matmul(torch.softmax(scores, dim=-1), values)
    return out.reshape(rows, heads, 1, dim)
