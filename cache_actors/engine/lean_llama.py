"""`LeanLlama`: a Llama's forward as one flat loop over its tensors, for serving on CPU.

Why: on a small model most of a decode step is not arithmetic but the cost
of calling it. Transformers' Llama runs about 45 PyTorch calls and a dozen
module and decorator layers per decoder layer (RMSNorm as six ops, rotary as
eleven, three projections for q, k and v, two for gate and up). This loop runs
about 20: `F.rms_norm`, one fused q|k|v projection, rotary on q and k together
from a cos/sin table, one fused gate|up projection, and the same SDPA calls.
Measured on this project's 2-core machine, one decode step (ms, Transformers
-> lean): the 24M-parameter Llama 9.5 -> 6.5 for one row and 16.0 -> 12.3 for
16 rows; SmolLM2-135M 46 -> 35 for one row.

It computes what Transformers computes, with the same kernels (SDPA for
prefill and masked prefill; RMSNorm in float32), so its logits equal
Transformers' on the same weights to float rounding, and the tests require
the same greedy tokens. Two calls differ in float32, where it is faster
(`lean_attention`): a decode step's attention is two matmuls and a softmax,
and a masked prefill stacks the query heads of each KV head into one SDPA
call; both round differently (~1e-7 a layer) from Transformers' calls.
A forward of `MIN_TOKENS` tokens or more (a long prompt, a batch of
prompts) runs its elementwise steps as compiled kernels when the runner
built them (`fused_pointwise`), a narrower one (a decode step) as C++
loops (`pointwise_kernel`), the same numbers to float rounding. The fused projections replace the model's own
``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj``
(`SliceOfFused`: the fused product, sliced), so the weights exist once and the
Transformers forward still works on them, for reference and for tests.

Covered: ``LlamaForCausalLM`` (SmolLM2, Llama 2/3, the demo model) on CPU,
with SDPA attention and a rotary embedding that depends on positions only.
Anything else (another architecture, a GPU, rope scaling that depends on the
sequence length) keeps Transformers' forward (`lean_unsupported` says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from cache_actors.engine.attention_kernel import AttentionKernel
from cache_actors.engine.fused_pointwise import MIN_TOKENS, CompiledPointwise
from cache_actors.engine.lean_attention import PrefillBias, additive_bias, attend, attend_decode, causal_mask
from cache_actors.engine.packed_linear import linear_call, make_linear
from cache_actors.engine.pointwise_kernel import PointwiseKernels

logger = logging.getLogger(__name__)

_SDPA_IMPLEMENTATIONS = ("sdpa", "blatam_gqa_sdpa")
_SEQUENCE_DEPENDENT_ROPE = ("dynamic", "longrope")
Linear = Callable[[torch.Tensor], torch.Tensor]


class LeanOutput(NamedTuple):
    """What callers read of a Transformers output: ``logits`` and the ``cache`` written to."""

    logits: torch.Tensor
    cache: Any


class SliceOfFused(nn.Module):
    """One projection of a fused one (``q_proj`` of q|k|v): the fused product, sliced.

    Keeps Transformers' forward of the model working on the single copy of
    the weights; it computes the whole fused product for each slice, so it
    is for reference use, not serving.
    """

    def __init__(self, fused: Linear, start: int, end: int) -> None:
        super().__init__()
        self.fused, self.start, self.end = fused, start, end  # a callable, not a module: packing leaves it alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start : self.end]

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.end} of a fused projection"


@dataclass(frozen=True, slots=True)
class _Masks:
    """What attention reads in every layer of one forward (`lean_attention`)."""

    mask: torch.Tensor | None
    causal: bool
    decode_bias: torch.Tensor | None
    prefill_bias: PrefillBias | None
    offset_causal: bool = False
    """The mask is plain causal after ``past`` held tokens (no mask was given): our kernel's causal mode needs none."""


@dataclass(frozen=True, slots=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: Linear
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


def lean_unsupported(model: PreTrainedModel) -> str | None:
    """Why `LeanLlama` cannot run ``model`` (None: it can)."""
    config = model.config
    if type(model).__name__ != "LlamaForCausalLM" or getattr(config, "model_type", None) != "llama":
        return f"{type(model).__name__} is not a LlamaForCausalLM"
    device = next(model.parameters()).device
    if device.type != "cpu":
        return f"the model is on {device.type}"
    if getattr(config, "_attn_implementation", None) not in _SDPA_IMPLEMENTATIONS:
        return f"attention implementation {config._attn_implementation!r} is not SDPA"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope in _SEQUENCE_DEPENDENT_ROPE:
        return f"rope type {rope!r} depends on the sequence length"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    return None


def fuse_projections(model: PreTrainedModel, *, pack: bool) -> list[tuple[Linear, Linear]]:
    """Fuse each layer's q|k|v and gate|up projections in place (`SliceOfFused`); the fused linears per layer.

    ``pack``: in oneDNN's packed layout (`packed_linear`) where this CPU
    supports it. Run it before `pack_linears`, which then packs the rest.
    """
    return [
        (_fuse_into(layer.self_attn, ("q_proj", "k_proj", "v_proj"), pack), _fuse_into(layer.mlp, ("gate_proj", "up_proj"), pack))
        for layer in model.model.layers[: model.config.num_hidden_layers]
    ]


class LeanLlama:
    """Call it like the model: ``lean(input_ids=..., cache=..., position_ids=..., attention_mask=..., logits_to_keep=...)``."""

    def __init__(self, model: PreTrainedModel, fused: list[tuple[Linear, Linear]]) -> None:
        """``fused``: `fuse_projections` of ``model``; its other linears are read as they are now (packed or not)."""
        config = model.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        self.eps = float(config.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        self.dtype = next(model.parameters()).dtype
        self.embed = model.model.embed_tokens.weight
        self.final_norm = model.model.norm.weight
        self.head = linear_call(model.lm_head)
        self._rotary = model.model.rotary_emb
        self._rope_table = (torch.empty(0), torch.empty(0))  # (cos, sin): replaced whole, never mutated
        # Compiled kernels for forwards of `MIN_TOKENS` tokens or more; the runner sets them once checked (None: eager).
        self.pointwise: CompiledPointwise | None = None
        # The same steps as C++ loops for narrower forwards (decode steps, short prompts); None: eager ops there.
        self.narrow_pointwise: PointwiseKernels | None = None
        # Our attention kernel for prefills and decode steps (`attention_kernel`); the runner sets it once built and
        # checked (None: SDPA and attend_decode's matmuls).
        self.attention: AttentionKernel | None = None
        self.layers = [
            _Layer(block.input_layernorm.weight, qkv, linear_call(block.self_attn.o_proj),
                   block.post_attention_layernorm.weight, gate_up, linear_call(block.mlp.down_proj))
            for block, (qkv, gate_up) in zip(model.model.layers, fused)
        ]

    # --- forward ------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> LeanOutput:
        """Transformers' arguments and meaning; ``attention_mask`` is None (causal) or a 4D boolean mask."""
        rows, width = input_ids.shape
        if cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if position_ids is None or attention_mask is None else 0
        if position_ids is None:
            position_ids = (torch.arange(width, device=input_ids.device) + past)[None, :].expand(rows, width)
        mask, causal = causal_mask(attention_mask, width, past, input_ids.device)
        # float32 masks as one additive bias for every layer (`lean_attention`): a decode step's, or a masked
        # prefill's with the query heads of each KV head stacked.
        # With our kernel, new tokens over held ones without a given mask run its causal mode: no bias to build or
        # read (a 512-token chunk over 1,537 held: 11.0 against 16.6 ms a layer on the 2-core AMD host).
        float_mask = mask is not None and self.dtype == torch.float32
        offset_causal = self.attention is not None and attention_mask is None and past > 0 and width > 1
        masks = _Masks(
            mask, causal,
            decode_bias=additive_bias(mask) if float_mask and width == 1 else None,
            prefill_bias=(PrefillBias.build(mask, self.num_heads // self.num_kv_heads)
                          if float_mask and width > 1 and not offset_causal else None),
            offset_causal=offset_causal,
        )
        x = F.embedding(input_ids, self.embed)
        if self.pointwise is not None and rows * width >= MIN_TOKENS:
            x = self._layers_fused(x, cache, position_ids, masks, self.pointwise)
        elif self.narrow_pointwise is not None and rows * width < MIN_TOKENS:
            x = self._layers_fused(x, cache, position_ids, masks, self.narrow_pointwise)
        else:
            x = self._layers_eager(x, cache, position_ids, masks)
        if isinstance(logits_to_keep, int):
            x = x[:, -logits_to_keep:] if logits_to_keep else x
        else:
            x = x[:, logits_to_keep]
        return LeanOutput(self.head(x), cache)

    def _layers_eager(self, x: torch.Tensor, cache: Any, position_ids: torch.Tensor, masks: _Masks) -> torch.Tensor:
        """Every decoder layer and the final norm, op for op as Transformers runs them."""
        rows, width, _ = x.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        half = dim // 2
        cos, sin = self._rope(position_ids)
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.input_norm)
            qkv = layer.qkv(h).view(rows, width, heads + 2 * kv_heads, dim).transpose(1, 2)
            qk = qkv[:, : heads + kv_heads]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            attended = self._attention(qk[:, :heads], qk[:, heads:], qkv[:, heads + kv_heads :], cache, index, masks)
            x = x + layer.o(attended.transpose(1, 2).reshape(rows, width, heads * dim))
            h = self._norm(x, layer.post_norm)
            gate_up = layer.gate_up(h)
            inner = gate_up.shape[-1] // 2
            x = x + layer.down(F.silu(gate_up[..., :inner]) * gate_up[..., inner:])
        return self._norm(x, self.final_norm)

    def _layers_fused(self, x: torch.Tensor, cache: Any, position_ids: torch.Tensor, masks: _Masks,
                      kernels: CompiledPointwise | PointwiseKernels) -> torch.Tensor:
        """`_layers_eager` with its elementwise steps as kernels (`fused_pointwise`, `pointwise_kernel`), on tokens laid flat.

        Each residual add is fused with the norm after it (the last with the
        final norm), so the loop carries ``x`` and its normed ``h``.
        """
        rows, width, hidden = x.shape
        tokens = rows * width
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        cos, sin = (table.reshape(tokens, 1, dim) for table in self._rope(position_ids))
        x = x.reshape(tokens, hidden)
        h = kernels.rms_norm(x, self.layers[0].input_norm, self.eps)
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(h).view(tokens, heads + 2 * kv_heads, dim)
            qk = kernels.rotary(qkv[:, : heads + kv_heads], cos, sin, dim // 2).view(rows, width, heads + kv_heads, dim)
            values = qkv.view(rows, width, heads + 2 * kv_heads, dim)[:, :, heads + kv_heads :]
            attended = self._attention(qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2),
                                       values.transpose(1, 2), cache, index, masks)
            x, h = kernels.add_rms_norm(x, layer.o(attended.transpose(1, 2).reshape(tokens, heads * dim)),
                                        layer.post_norm, self.eps)
            after = self.layers[index + 1].input_norm if index + 1 < len(self.layers) else self.final_norm
            x, h = kernels.add_rms_norm(x, layer.down(kernels.silu_mul(layer.gate_up(h))), after, self.eps)
        return h.view(rows, width, hidden)

    def _attention(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cache: Any, index: int,
                   masks: _Masks) -> torch.Tensor:
        """Store layer ``index``'s new keys and values, then attend over all of them: ``[rows, heads, width, dim]``."""
        keys, values = cache.update(keys, values, index)
        if masks.decode_bias is not None:
            return attend_decode(query, keys, values, masks.decode_bias, scale=self.scale, num_kv_heads=self.num_kv_heads,
                                 kernel=self.attention)
        return attend(query, keys, values, masks.mask, masks.causal, scale=self.scale, num_kv_heads=self.num_kv_heads,
                      prefill_bias=masks.prefill_bias, kernel=self.attention, offset_causal=masks.offset_causal)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)  # Transformers' order

    def _rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[rows, 1, width, dim]`` from a table grown on demand (the model's own rotary module fills it)."""
        needed = int(position_ids.max()) + 1
        cos, sin = self._rope_table
        if needed > cos.shape[0]:
            size = max(needed, 2 * cos.shape[0], 256)
            positions = torch.arange(size, device=self.embed.device)[None, :]
            cos, sin = (table[0] for table in self._rotary(self.embed[:1].to(self.dtype), positions))
            self._rope_table = (cos, sin)
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)


def _fuse_into(parent: nn.Module, names: tuple[str, ...], pack: bool) -> Linear:
    """One linear for ``parent``'s projections ``names``, each replaced by its `SliceOfFused`."""
    parts = [getattr(parent, name) for name in names]
    weight = torch.cat([part.weight.detach() for part in parts])
    biases = [part.bias for part in parts]
    bias = None if all(b is None for b in biases) else torch.cat([
        (b.detach() if b is not None else torch.zeros(p.out_features, dtype=weight.dtype, device=weight.device))
        for b, p in zip(biases, parts)
    ])
    fused = make_linear(weight, bias, pack=pack)
    start = 0
    for name, part in zip(names, parts):
        setattr(parent, name, SliceOfFused(fused, start, start + part.out_features))
        start += part.out_features
    return fused
