"""Codecs that store the block as one float tensor: as is, or cast.

`NativeCodec` is what a cache hit decodes most often, so its decode is a
single ``copy_`` into the caller's view. The cast codecs round to nearest
(IEEE, what ``Tensor.to`` does), which gives the per-element bound
``|err| <= u * |x| + tiny`` with ``u`` the unit roundoff of the storage dtype
and ``tiny`` half its smallest subnormal.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from cache_actors.codecs.base import Codec, KVShape, PartSpecs

#: Unit roundoff (half an ulp at 1.0) and half the smallest subnormal, per dtype.
UNIT_ROUNDOFF: dict[torch.dtype, float] = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
HALF_MIN_SUBNORMAL: dict[torch.dtype, float] = {
    torch.float32: 2.0**-150,
    torch.float16: 2.0**-25,
    torch.bfloat16: 2.0**-134,
}


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` has no NaN/inf; a float32 sum (NaN and inf propagate) is
    ~50x faster on CPU than ``isfinite().all()``, which only runs if the sum
    itself is not finite (NaN/inf, or a bf16 sum that overflowed)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


class NativeCodec(Codec):
    """The model dtype, unchanged: one part ``kv`` of the block shape."""

    name: ClassVar[str] = "native"
    lossless: ClassVar[bool] = True
    error_bound: ClassVar[str] = "exact"
    rel_rmse_bound: ClassVar[float] = 0.0

    def part_specs(self) -> PartSpecs:
        return {"kv": (self.shape.block_shape(), self.model_dtype)}

    def _encode(self, kv: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"kv": kv}

    def _decode_into(self, parts: Mapping[str, torch.Tensor], out: torch.Tensor) -> None:
        out.copy_(parts["kv"])


class CastCodec(Codec):
    """Stores the block cast to ``storage_dtype`` (one part ``kv``).

    Exact when the model already computes in ``storage_dtype``: then the
    instance's ``lossless``/``error_bound``/``rel_rmse_bound`` say so, while
    the class attributes describe the general (lossy) case. Encoding refuses
    blocks the storage dtype cannot hold (overflow to inf, or NaN/inf input)
    instead of caching KV that would decode differently.
    """

    storage_dtype: ClassVar[torch.dtype]
    lossless: ClassVar[bool] = False

    def __init__(self, shape: KVShape, model_dtype: torch.dtype) -> None:
        super().__init__(shape, model_dtype)
        if model_dtype == self.storage_dtype:
            # Instance attributes shadow the class defaults (see Codec).
            self.lossless = True  # type: ignore[misc]
            self.error_bound = "exact"  # type: ignore[misc]
            self.rel_rmse_bound = 0.0  # type: ignore[misc]

    def part_specs(self) -> PartSpecs:
        return {"kv": (self.shape.block_shape(), self.storage_dtype)}

    def _encode(self, kv: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = kv.to(self.storage_dtype)
        if not self.lossless and not _all_finite(enc):
            if bool(torch.isfinite(kv).all()):
                raise ValueError(f"{self.name}: KV values overflow {self.storage_dtype} (max abs {kv.abs().max().item():.4g})")
            raise ValueError(f"{self.name}: KV contains NaN or inf; refusing to encode it")
        return {"kv": enc}

    def _decode_into(self, parts: Mapping[str, torch.Tensor], out: torch.Tensor) -> None:
        out.copy_(parts["kv"])

    def abs_error_bound(self, kv: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.lossless:
            return super().abs_error_bound(kv, parts)
        x = kv.to(torch.float64).abs()
        return x * UNIT_ROUNDOFF[self.storage_dtype] + HALF_MIN_SUBNORMAL[self.storage_dtype]


class Fp16Codec(CastCodec):
    """IEEE half: 2 bytes per value, 11 significant bits, max 65504."""

    name: ClassVar[str] = "fp16"
    storage_dtype: ClassVar[torch.dtype] = torch.float16
    error_bound: ClassVar[str] = "|err| <= 2^-11*|x| + 2^-25 per element (exact if the model is fp16)"
    rel_rmse_bound: ClassVar[float] = 2.0**-11


class Bf16Codec(CastCodec):
    """bfloat16: 2 bytes per value, float32's range, 8 significant bits."""

    name: ClassVar[str] = "bf16"
    storage_dtype: ClassVar[torch.dtype] = torch.bfloat16
    error_bound: ClassVar[str] = "|err| <= 2^-8*|x| per element (exact if the model is bf16)"
    rel_rmse_bound: ClassVar[float] = 2.0**-8
