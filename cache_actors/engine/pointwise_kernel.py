"""A narrow forward's elementwise steps as C++ loops: rotary, RMSNorm, residual add + RMSNorm, SiLU x up.

Why: a decode step of a small model pays per call, not per float. In eager
PyTorch with two threads, one RMSNorm of a 576-wide row took ~21 us (it is
six ops, each a parallel region), rotary ~17 us and SiLU x up ~9 us; a
SmolLM2 decode step makes 61 norms, 30 of each of the others and 60
residual adds, ~2.2 ms of a ~36 ms step on a 2-core AMD EPYC. Inductor's
kernels (`fused_pointwise`) cost ~40-60 us to enter, so they serve wide
forwards only. `pointwise_cpu.cpp` does each step in one pass on the
calling thread (the data is a few KB), entered through pybind11 in a few
microseconds; `LeanLlama` runs it below `fused_pointwise.MIN_TOKENS` tokens.
Measured there, in one process, the AVX2 attention kernel on, 64 new tokens
a request, alternated: a SmolLM2 decode step 34.3 ms median against 40.5
with the eager ops, the same greedy tokens.

AVX2 and FMA (any x86 CPU with AVX-512 has them too), float32 only, built
once per machine at model load like `attention_kernel` (a few seconds) and
checked against the eager functions of `fused_pointwise` on probe shapes
(the results differ by float rounding: the sums run in another order and
the rotary uses fused multiply-adds). No compiler, another CPU, a failed
build or a mismatch leaves the eager ops on, and the log says which.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cache_actors.engine import fused_pointwise
from cache_actors.engine.cpp_build import build_blocker, load_extension

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("pointwise_cpu.cpp")
_FLAGS = ["-O3", "-mavx2", "-mfma"]


@dataclass(frozen=True, slots=True)
class PointwiseKernels:
    """`fused_pointwise`'s four functions, same arguments and results, as C++ calls."""

    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def build(cls, dtype: torch.dtype, device: torch.device) -> PointwiseKernels | None:
        """The kernels, compiled and checked here; None (eager ops stay) where they cannot be used, the reason logged."""
        reason = build_blocker(dtype, device)
        if reason is not None:
            logger.info("narrow pointwise kernels off: %s", reason)
            return None
        module = _compiled()
        if module is None:
            return None
        kernels = cls(module.rotary, module.rms_norm, module.add_rms_norm, module.silu_mul)
        mismatch = check(kernels)
        if mismatch is not None:
            logger.warning("narrow pointwise kernels off: they differ from the eager ops on %s", mismatch)
            return None
        return kernels


@functools.cache
def _compiled() -> Any | None:
    """Build (or reuse this machine's build of) `pointwise_cpu.cpp`; once per process."""
    return load_extension("blatam_pointwise_cpu", SOURCE, _FLAGS, openmp=False, what="narrow pointwise kernels")


def check(kernels: PointwiseKernels) -> str | None:
    """The first probe on which ``kernels`` differ from `fused_pointwise`'s eager functions, or None.

    Widths that are and are not multiples of the 8-float vectors, one and
    several tokens, and the strided q|k view of a fused q|k|v product.
    """
    generator = torch.Generator().manual_seed(0)

    def close(got: torch.Tensor, want: torch.Tensor) -> bool:
        return bool(torch.allclose(got, want, rtol=1e-5, atol=1e-5))

    for tokens, hidden, heads, kv_heads, dim in ((1, 576, 9, 3, 64), (5, 100, 3, 1, 20), (16, 64, 4, 2, 16)):
        x, residual = (torch.randn(tokens, hidden, generator=generator) for _ in range(2))
        weight = torch.randn(hidden, generator=generator)
        if not close(kernels.rms_norm(x, weight, 1e-5), fused_pointwise.rms_norm(x, weight, 1e-5)):
            return f"rms_norm [{tokens}, {hidden}]"
        got, want = kernels.add_rms_norm(x, residual, weight, 1e-6), fused_pointwise.add_rms_norm(x, residual, weight, 1e-6)
        if not (close(got[0], want[0]) and close(got[1], want[1])):
            return f"add_rms_norm [{tokens}, {hidden}]"
        qkv = torch.randn(tokens, heads + 2 * kv_heads, dim, generator=generator)
        angles = torch.randn(tokens, 1, dim, generator=generator)
        qk = qkv[:, : heads + kv_heads]
        if not close(kernels.rotary(qk, angles.cos(), angles.sin(), dim // 2),
                     fused_pointwise.rotary(qk, angles.cos(), angles.sin(), dim // 2)):
            return f"rotary [{tokens}, {heads + kv_heads}, {dim}]"
        gate_up = torch.randn(tokens, 2 * hidden, generator=generator) * 6
        if not close(kernels.silu_mul(gate_up), fused_pointwise.silu_mul(gate_up)):
            return f"silu_mul [{tokens}, {2 * hidden}]"
    return None
