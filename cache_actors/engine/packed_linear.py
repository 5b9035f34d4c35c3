"""Linear layers whose weights oneDNN has packed once, for CPU inference.

A decode step of a small model is all matrix-vector and skinny matrix
products over weights read from memory every step. ``F.linear`` hands
PyTorch's row-major weight to the BLAS each call; oneDNN's blocked layout,
made once at load (what inductor's weight freezing and vLLM-CPU do), reads
it in the order its kernels want. Measured on this project's 2-core AVX-512
machine, the 24M-parameter Llama's linears of one step took (ms, plain ->
packed): 9.8 -> 4.6 for one row, 11.7 -> 6.7 for 16 rows, 323 -> 233 for a
1,024-token prefill.

Every path of a runner (prefill, decode, batched decode, prompt logprobs)
goes through the same packed layers, so outputs stay consistent among them;
they differ from plain ``F.linear`` by float rounding only (~1e-6 relative).
The packed weight replaces the module's parameter: the runner's model is for
inference, and nothing saves or trains it (conversions load their own copy).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PACK_BATCH_HINT = 16
"""Rows oneDNN picks its layout for: the default batch of the LLM replica; any row count still works."""

_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """``nn.Linear`` for inference, its weight held in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear, *, batch_hint: int = PACK_BATCH_HINT) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)
        # Plain attributes, not parameters: a packed (mkldnn-layout) tensor cannot be a state_dict entry.
        self.packed_bias = None if linear.bias is None else linear.bias.detach().clone()

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, batch_hint: int = PACK_BATCH_HINT) -> "PackedLinear":
        """Pack a weight that no ``nn.Linear`` holds (a fused projection)."""
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return cls(linear, batch_hint=batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.packed_bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.packed_bias is not None}"


@functools.lru_cache(maxsize=None)
def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build and device can run packed linears, checked on a probe against ``F.linear``."""
    if device.type != "cpu" or dtype not in _PACKABLE_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        probe = nn.Linear(64, 48, dtype=dtype)
        with torch.no_grad():
            probe.weight.copy_(torch.randn(48, 64, generator=generator))
        x = torch.randn(3, 64, generator=generator, dtype=dtype)
        with torch.inference_mode():
            got, want = PackedLinear(probe)(x), F.linear(x, probe.weight, probe.bias)
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        return bool(torch.allclose(got.float(), want.float(), rtol=tolerance, atol=tolerance))
    except (RuntimeError, AttributeError) as exc:  # an op missing from this build, or refused for this CPU
        logger.info("packed linears unavailable: %s", exc)
        return False


def pack_linears(model: nn.Module, *, batch_hint: int = PACK_BATCH_HINT) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` by a `PackedLinear`; the number replaced (0: unsupported)."""
    first = next(model.parameters(), None)
    if first is None or not packing_supported(first.device, first.dtype):
        return 0
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.dtype == first.dtype]
    for parent, name, linear in targets:
        setattr(parent, name, PackedLinear(linear, batch_hint=batch_hint))
    return len(targets)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, *, pack: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x @ weight.T + bias``, on a packed copy of ``weight`` when ``pack`` and this CPU supports it."""
    if pack and packing_supported(weight.device, weight.dtype):
        return PackedLinear.from_weight(weight, bias).forward
    return lambda x: F.linear(x, weight, bias)


def linear_call(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear module's ``forward``, without the module call (hooks, dispatch) around it: a decode step makes ~50."""
    return module.forward if isinstance(module, (PackedLinear, nn.Linear)) else module
