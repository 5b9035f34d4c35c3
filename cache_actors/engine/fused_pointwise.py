"""A wide forward's elementwise work as kernels compiled by inductor: rotary, residual add + RMSNorm, SiLU x up.

Why: in eager PyTorch each of these is several passes over the activations
(rotary alone is a cat, a neg, two muls and an add; RMSNorm six ops), and
on a long prefill those activations no longer sit in cache between the
passes. vLLM-CPU runs fused C++ kernels for the same steps. Profiled on this
project's 2-core Xeon, a fresh 2,049-token prompt on SmolLM2-135M spent
~350 ms of 2.7 s there (rotary 113, RMSNorm 111, SiLU x up 90, residual adds
34); inductor fuses each step into one loop over the data (one graph per
function, every size symbolic, so one compile serves every model and width).

Only worth it on wide forwards: a compiled call costs ~40-60 us more to
enter than an eager op, which a decode step (a few rows) or a short prompt
would pay per layer for nothing. So `LeanLlama` calls these when a forward
runs at least `MIN_TOKENS` tokens (rows x width) and keeps the eager ops,
Transformers' own, for the rest.

Compiling needs a C++ compiler at run time and takes a few seconds, once
per process (about 6 s on this machine, 3 s once inductor's on-disk cache
holds the kernels): the model runner does it at load with `check_kernels`, which
also compares a real forward with and without the kernels. Where either
fails, the kernels stay off (logged) and the eager ops serve everything. float32 only: in bf16 the
eager path's RMSNorm rounds as Transformers does and these would not.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch._inductor import config as inductor_config

logger = logging.getLogger(__name__)

MIN_TOKENS = 512
"""Tokens in one forward (rows x width) from which the compiled kernels are used."""


def rotary(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int) -> torch.Tensor:
    """Rotary embedding of ``qk`` ``[tokens, heads, dim]`` with ``cos``/``sin`` ``[tokens, 1, dim]`` (Llama's rotate_half)."""
    return qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` ``[tokens, hidden]``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + residual, RMSNorm of it)``: a decoder layer's residual add and the next norm in one pass."""
    x = x + residual
    return x, rms_norm(x, weight, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU of the gate half times the up half of a fused gate|up product ``[tokens, 2 * inner]``."""
    inner = gate_up.shape[-1] // 2
    return F.silu(gate_up[..., :inner]) * gate_up[..., inner:]


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would call (None: there is none, so nothing can be compiled)."""
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return name
    return None


class CompiledPointwise:
    """The four functions above, compiled (``dynamic``: one graph each for every size)."""

    def __init__(self) -> None:
        # Compile in this process, here and for any later recompile: inductor's default pool of compile
        # workers would start beside a Serve replica (processes, and a semaphore mapped from /dev/shm).
        inductor_config.compile_threads = 1

        def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
            return torch.compile(fn, dynamic=True, fullgraph=True)

        self.rotary = compiled(rotary)
        self.rms_norm = compiled(rms_norm)
        self.add_rms_norm = compiled(add_rms_norm)
        self.silu_mul = compiled(silu_mul)

    @classmethod
    def build(cls, *, dtype: torch.dtype, device: torch.device) -> CompiledPointwise | None:
        """The process's kernels where they can run, else None (logged). Compiled on first call: see `check_kernels`."""
        if device.type != "cpu" or dtype != torch.float32:
            return None
        if cpp_compiler() is None:
            logger.warning("fused pointwise kernels off: no C++ compiler found (g++, c++ or clang++)")
            return None
        return _shared()


def check_kernels(forward: Callable[[torch.Tensor], torch.Tensor], with_kernels: Callable[[bool], None], vocab: int) -> bool:
    """Compile the kernels by running ``forward`` on `MIN_TOKENS` tokens with them, and compare with the eager run.

    ``forward(ids)`` returns logits; ``with_kernels(on)`` switches the
    kernels on or off. Running a real forward (not stand-in tensors)
    compiles each kernel for the strides, constants and sizes the model
    passes, so no request later waits for a recompile. False (logged, the
    kernels left off) when compiling fails or the logits differ beyond float
    rounding or in their greedy choice.
    """
    ids = torch.randint(0, vocab, (1, MIN_TOKENS), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    try:
        with_kernels(False)
        want = forward(ids)
        with_kernels(True)
        got = forward(ids)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        if not torch.equal(got.argmax(-1), want.argmax(-1)):
            raise AssertionError("the greedy tokens differ")
    except Exception:  # noqa: BLE001 - a compile failure or a mismatch leaves the eager ops serving
        with_kernels(False)
        logger.warning("fused pointwise kernels off: compiling or checking them failed", exc_info=True)
        return False
    logger.info("fused pointwise kernels ready in %.1f s (forwards of %d tokens or more)",
                time.perf_counter() - started, MIN_TOKENS)
    return True


@functools.cache
def _shared() -> CompiledPointwise:
    """One set per process: Dynamo caches compiled code per function object, so every model shares the compile."""
    return CompiledPointwise()
