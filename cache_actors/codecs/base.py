"""The codec interface: how one KV block is laid out in the cache's pool.

A KV block has the logical shape ``[L, 2, H, bs, D]`` (layers, key/value, kv
heads, block_size tokens, head_dim) in the model dtype. The cache keeps one
preallocated tensor ``[num_blocks, *part_shape]`` per named *part* of a codec,
so a codec is fully described by `Codec.part_specs` plus the two conversions.
The base class validates every call's shapes and dtypes (a wrong pool layout
must fail loudly, never decode garbage) and leaves only the arithmetic to the
subclasses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

#: Model dtypes a KV block may have.
MODEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

PartSpecs = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass(frozen=True, slots=True)
class KVShape:
    """Geometry of one KV block; the same for every block of a cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVShape.{field} must be a positive int, got {value!r}")

    def block_shape(self) -> tuple[int, int, int, int, int]:
        """``(L, 2, H, bs, D)``: the logical shape of one block."""
        return (self.num_layers, 2, self.num_kv_heads, self.block_size, self.head_dim)

    def block_numel(self) -> int:
        return math.prod(self.block_shape())


@dataclass(frozen=True, slots=True)
class CodecError:
    """Error of one encode/decode round trip, computed in float64.

    ``rel_rmse = rmse / rms(original)``; it is 0 for an exact round trip and
    ``inf`` when the original is all zeros but the round trip is not.
    """

    max_abs: float
    rmse: float
    rel_rmse: float


def compare(original: torch.Tensor, decoded: torch.Tensor) -> CodecError:
    """Error of ``decoded`` against ``original`` (same shape, any float dtypes)."""
    if original.shape != decoded.shape:
        raise ValueError(f"cannot compare shapes {tuple(original.shape)} and {tuple(decoded.shape)}")
    x = original.to(torch.float64)
    diff = decoded.to(torch.float64) - x
    if diff.numel() == 0:
        return CodecError(0.0, 0.0, 0.0)
    rmse = diff.square().mean().sqrt().item()
    rms = x.square().mean().sqrt().item()
    if rms > 0:
        rel = rmse / rms
    else:
        rel = 0.0 if rmse == 0 else math.inf
    return CodecError(max_abs=diff.abs().max().item(), rmse=rmse, rel_rmse=rel)


class Codec(ABC):
    """Storage format of a KV block.

    Subclasses set the class attributes and implement `part_specs`, `_encode`
    and `_decode_into`; the public methods validate and delegate.

    ``lossless`` and ``error_bound`` are class attributes describing the
    codec's default case; a codec whose exactness depends on the model dtype
    (fp16/bf16) shadows them with instance attributes in ``__init__``, so
    ``codec.lossless`` is always the truth for that instance while
    ``Fp16Codec.lossless`` stays the conservative answer (``False``).
    ``rel_rmse_bound`` is the numeric form of the bound, checked by the tests.
    """

    name: ClassVar[str]
    lossless: ClassVar[bool]
    error_bound: ClassVar[str]
    rel_rmse_bound: ClassVar[float]

    def __init__(self, shape: KVShape, model_dtype: torch.dtype) -> None:
        if not isinstance(shape, KVShape):
            raise TypeError(f"shape must be a KVShape, got {type(shape).__name__}")
        if model_dtype not in MODEL_DTYPES:
            raise ValueError(f"unsupported model dtype {model_dtype}; supported: {', '.join(map(str, MODEL_DTYPES))}")
        self.shape = shape
        self.model_dtype = model_dtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shape}, model_dtype={self.model_dtype})"

    # --- layout ---------------------------------------------------------------

    @abstractmethod
    def part_specs(self) -> PartSpecs:
        """Per-block shape and dtype of each stored part, in a fixed order."""

    def bytes_per_block(self) -> int:
        """Bytes one block takes in the pool (all parts, scales included)."""
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.part_specs().values())

    def bytes_per_token(self) -> float:
        return self.bytes_per_block() / self.shape.block_size

    def empty_parts(self, num_blocks: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Uninitialised parts for ``num_blocks`` blocks: what a pool preallocates."""
        return {
            name: torch.empty((num_blocks, *shape), dtype=dtype, device=device)
            for name, (shape, dtype) in self.part_specs().items()
        }

    # --- conversions ----------------------------------------------------------

    def encode(self, kv: torch.Tensor) -> dict[str, torch.Tensor]:
        """``kv [n, L, 2, H, bs, D]`` (model dtype) -> parts, each ``[n, *part_shape]``.

        Parts are on ``kv``'s device. When no conversion is needed (native, or
        a cast to the model's own dtype) a part may share memory with ``kv``:
        the caller copies parts into its pool anyway.

        Raises:
            ValueError: wrong shape or dtype, or (lossy codecs) values the
                format cannot represent (NaN/inf, fp16 overflow).
        """
        self._check_kv("kv", kv)
        return self._encode(kv)

    def decode_into(self, parts: Mapping[str, torch.Tensor], out: torch.Tensor) -> None:
        """Decode ``parts`` into ``out [n, L, 2, H, bs, D]`` (model dtype).

        ``out`` may be a non-contiguous view (the cache passes a permuted view
        of its ``[L, 2, H, n, bs, D]`` buffer); it is written in place.
        """
        self._check_kv("out", out)
        self._check_parts(parts, out.shape[0])
        self._decode_into(parts, out)

    def decode(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Decode into a freshly allocated contiguous tensor."""
        n, device = self._check_parts(parts, None)
        out = torch.empty((n, *self.shape.block_shape()), dtype=self.model_dtype, device=device)
        self._decode_into(parts, out)
        return out

    def measure_error(self, kv: torch.Tensor) -> CodecError:
        """Round-trip ``kv`` and compare with the original."""
        return compare(kv, self.decode(self.encode(kv)))

    def abs_error_bound(self, kv: torch.Tensor, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Guaranteed per-element bound on ``|decode(parts) - kv|`` (float64, broadcastable to kv).

        ``parts`` must be ``encode(kv)``; lossy codecs read their scales from it.
        """
        return torch.zeros((), dtype=torch.float64, device=kv.device)

    @abstractmethod
    def _encode(self, kv: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _decode_into(self, parts: Mapping[str, torch.Tensor], out: torch.Tensor) -> None: ...

    # --- validation -----------------------------------------------------------

    def _check_kv(self, what: str, t: torch.Tensor) -> None:
        expected = self.shape.block_shape()
        if t.dim() != 6 or tuple(t.shape[1:]) != expected:
            raise ValueError(f"{self.name}: {what} must have shape [n, {', '.join(map(str, expected))}], got {tuple(t.shape)}")
        if t.dtype != self.model_dtype:
            raise ValueError(f"{self.name}: {what} must have the model dtype {self.model_dtype}, got {t.dtype}")

    def _check_parts(self, parts: Mapping[str, torch.Tensor], n: int | None) -> tuple[int, torch.device]:
        specs = self.part_specs()
        if set(parts) != set(specs):
            raise ValueError(f"{self.name}: expected parts {sorted(specs)}, got {sorted(parts)}")
        device = None
        for name, (shape, dtype) in specs.items():
            t = parts[name]
            if n is None:
                n = t.shape[0] if t.dim() > 0 else -1
            if tuple(t.shape) != (n, *shape) or t.dtype != dtype:
                raise ValueError(
                    f"{self.name}: part {name!r} must be [{n}, {', '.join(map(str, shape))}] {dtype}, "
                    f"got {list(t.shape)} {t.dtype}"
                )
            if device is None:
                device = t.device
            elif t.device != device:
                raise ValueError(f"{self.name}: parts are on different devices ({device} and {t.device})")
        assert n is not None and device is not None
        return n, device
