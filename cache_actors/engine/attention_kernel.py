"""Our own CPU attention kernel for the lean forward (float32, 64-dim heads): prefills and decode steps, with AVX-512 or AVX2.

Why: PyTorch's CPU flash attention does its matrix products through MKL's
``sgemm``, which on AMD CPUs runs a generic path: on this project's 2-core
AMD EPYC it was 24% of a fresh prefill's CPU, and oneDNN did the same
products about twice as fast. `attention_cpu.cpp` keeps each tile of 4
query rows' scores, online softmax and output in AVX-512 registers instead.
Measured there per layer (ms, against SDPA, runs alternated): a fresh
2,049-token prompt 28.0 against 41.6 (8 query and 4 KV heads) and 31.4
against 43.0 (9 and 3); 65 new tokens over 2,049 cached 2.66-2.73 against
3.22; equal to SDPA within 6e-7. New tokens over held ones without a given
mask (a prompt on a cached prefix, a chunk of a long prompt) run its causal
mode, which needs no bias: a 512-token chunk over 1,537 held 11.0 against
16.6 ms a layer through the bias.

`decode` does one step of the continuous batch: each row's query heads over
that row's keys in the ragged batch buffer, read in place and only up to the
row's own length. Per layer (16 rows of 64-128 tokens, 8 query and 4 KV
heads) 55 against 151 us for `lean_attention.attend_decode`'s two matmuls and
softmax; rows of 1,000-2,000 tokens 1.38 against 4.04 ms.

On a CPU with AVX2 and FMA but no AVX-512, `attention_cpu_avx2.cpp` does
both with 8-float vectors: the prefill's tiles (`attention_prefill.h`, the
walk both builds share) are 6 query rows by 16 keys, 12 accumulators of
the 16 registers. Measured on a 2-core AMD EPYC without AVX-512, per layer,
medians of runs alternated with SDPA (MKL's generic sgemm path there too):
65 new tokens over 1,984 cached 2.79-3.16 against 3.32-3.88 ms (9 query
and 3 KV heads, SmolLM2-135M's) and 2.43-2.88 against 3.02-3.56 (8 and 4);
a fresh 2,049-token prompt 41.5-43.9 against 49.6-51.6 (9 and 3); a
512-token chunk over 1,537 held 19.7-20.5 against 25.4-27.1. Its decode
step against `lean_attention.attend_decode`'s matmuls: one row of 130
keys 17 against 72 us, 16 rows of 64-192 keys 101 against 326 us, 16 rows
of 1,000-2,000 keys 2.9 against 5.7 ms; a whole one-row decode step of
the model in one process 35-36 against 39-41 ms.

It is compiled once per machine at model load (``torch.utils.cpp_extension``,
~30 s; later loads reuse the build) and checked against SDPA on probe
shapes before any request uses it. Neither AVX-512 nor AVX2, no C++
compiler, a failed build or a mismatch leaves SDPA on, and the log says which.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from cache_actors.engine.cpp_build import build_blocker, load_extension, simd_level
from cache_actors.engine.lean_attention import PrefillBias, additive_bias, causal_mask

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention_cpu.cpp")
SOURCE_AVX2 = Path(__file__).with_name("attention_cpu_avx2.cpp")
HEAD_DIM = 64
"""The only head size the kernel computes (SmolLM2's and the peer benchmark's 24M Llama's)."""
BLOCK_M = 128
"""Query rows per task: enough tasks for two threads on a one-prompt prefill, few transposes of K."""
_FLAGS = ["-O3", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"]
_FLAGS_AVX2 = ["-O3", "-mavx2", "-mfma"]


@dataclass(frozen=True, slots=True)
class AttentionKernel:
    """The built kernel. Its prefill calls take query heads stacked per KV head, ``[rows, kv_heads, groups * width, 64]``;
    `decode` takes them grouped, ``[rows, kv_heads, groups, 64]``."""

    _attend: Callable[..., torch.Tensor]
    _decode: Callable[..., torch.Tensor]

    def masked(self, stacked: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Attention under an additive ``[rows, 1, groups * width, kv]`` bias (`PrefillBias`)."""
        return self._attend(stacked, keys, values, bias, scale, BLOCK_M, 0, 0)

    def causal(self, stacked: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, width: int,
               scale: float) -> torch.Tensor:
        """Causal attention of ``width`` new tokens per query head after ``kv - width`` held ones."""
        return self._attend(stacked, keys, values, torch.empty(0), scale, BLOCK_M, width, keys.shape[2] - width)

    def decode(self, grouped: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
               scale: float) -> torch.Tensor:
        """One token per row under an additive ``[rows, 1, 1, kv]`` bias, each row read only up to its last open key.

        ``keys``/``values`` may be strided views (the ragged batch buffer's
        rows), read in place.
        """
        return self._decode(grouped, keys, values, bias, scale)

    @staticmethod
    def fits(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
        """Whether these tensors are what the kernel computes (float32, 64-dim heads, rows of contiguous dims)."""
        return (query.dtype == keys.dtype == values.dtype == torch.float32 and query.shape[-1] == HEAD_DIM
                and keys.stride(-1) == 1 and values.stride(-1) == 1)

    @classmethod
    def build(cls, dtype: torch.dtype, device: torch.device, head_dim: int) -> AttentionKernel | None:
        """The kernel, compiled and checked here; None (SDPA stays) where it cannot be used, with the reason logged."""
        reason = _unusable(dtype, device, head_dim)
        if reason is not None:
            logger.info("attention kernel off: %s", reason)
            return None
        wide = simd_level() == "avx512"
        module = _compiled() if wide else _compiled_avx2()
        if module is None:
            return None
        kernel = cls(module.attend, module.decode)
        mismatch = check(kernel)
        if mismatch is not None:
            logger.warning("attention kernel off: it differs from SDPA on %s", mismatch)
            return None
        return kernel


def _unusable(dtype: torch.dtype, device: torch.device, head_dim: int) -> str | None:
    if head_dim != HEAD_DIM:
        return f"{HEAD_DIM}-dim heads only (this model: {head_dim})"
    return build_blocker(dtype, device)


@functools.cache
def _compiled() -> Any | None:
    """Build (or reuse this machine's build of) `attention_cpu.cpp`; once per process."""
    return load_extension("blatam_attention_cpu", SOURCE, _FLAGS, openmp=True, what="attention kernel")


@functools.cache
def _compiled_avx2() -> Any | None:
    """Build (or reuse this machine's build of) `attention_cpu_avx2.cpp`; once per process."""
    return load_extension("blatam_attention_cpu_avx2", SOURCE_AVX2, _FLAGS_AVX2, openmp=True, what="attention kernel")


def check(kernel: AttentionKernel) -> str | None:
    """The first probe on which ``kernel`` differs from SDPA (NaN rows included), or None."""
    generator = torch.Generator().manual_seed(0)
    for heads, kv_heads, width, past in ((8, 4, 37, 0), (9, 3, 5, 70), (4, 4, 70, 3)):
        groups = heads // kv_heads
        query = torch.randn(2, heads, width, HEAD_DIM, generator=generator)
        keys, values = (torch.randn(2, kv_heads, past + width, HEAD_DIM, generator=generator) for _ in range(2))
        stacked = query.reshape(2, kv_heads, groups * width, HEAD_DIM)
        want = F.scaled_dot_product_attention(query, keys, values, is_causal=past == 0, enable_gqa=groups > 1,
                                              attn_mask=causal_mask(None, width, past, query.device)[0])
        got = kernel.causal(stacked, keys, values, width, HEAD_DIM**-0.5).view_as(query)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return f"causal {heads}/{kv_heads} heads, {width} after {past}"
        mask = torch.rand(2, 1, width, past + width, generator=generator) < 0.7
        mask[1, 0, 0] = False  # a query row with nothing to attend (SDPA gives zeros)
        want = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=groups > 1)
        got = kernel.masked(stacked, keys, values, PrefillBias.build(mask, groups).bias, HEAD_DIM**-0.5).view_as(query)
        if not (torch.equal(got.isnan(), want.isnan()) and torch.allclose(got.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-5)):
            return f"masked {heads}/{kv_heads} heads, {width} over {past + width}"
        mismatch = _check_decode(kernel, generator, heads, kv_heads, past + width)
        if mismatch is not None:
            return mismatch
    return None


def _check_decode(kernel: AttentionKernel, generator: torch.Generator, heads: int, kv_heads: int,
                  longest: int) -> str | None:
    """A ragged decode step as the batch buffer gives it: strided rows of different lengths, one of them 1."""
    groups, rows = heads // kv_heads, 3
    lengths = torch.tensor([longest, 1, longest // 2 + 1])
    buffer = torch.randn(2, rows, kv_heads, longest + 9, HEAD_DIM, generator=generator)
    keys, values = buffer[0, :, :, :longest], buffer[1, :, :, :longest]
    query = torch.randn(rows, heads, 1, HEAD_DIM, generator=generator)
    mask = (torch.arange(longest)[None, :] < lengths[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=groups > 1)
    got = kernel.decode(query.reshape(rows, kv_heads, groups, HEAD_DIM), keys, values, additive_bias(mask),
                        HEAD_DIM**-0.5)
    if not torch.allclose(got.reshape_as(query), want, rtol=1e-4, atol=1e-5):
        return f"decode {heads}/{kv_heads} heads, rows of {lengths.tolist()}"
    return None

