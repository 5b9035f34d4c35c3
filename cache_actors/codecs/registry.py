"""Codec names -> classes, and a comparison table for docs and benchmarks."""

from __future__ import annotations

from typing import Any

import torch

from cache_actors.codecs.base import Codec, KVShape
from cache_actors.codecs.cast import Bf16Codec, Fp16Codec, NativeCodec
from cache_actors.codecs.quant import Int4Codec, Int8Codec

CODECS: dict[str, type[Codec]] = {cls.name: cls for cls in (NativeCodec, Fp16Codec, Bf16Codec, Int8Codec, Int4Codec)}


def make_codec(name: str, shape: KVShape, model_dtype: torch.dtype) -> Codec:
    """Instantiate the codec registered under ``name``.

    Raises:
        ValueError: unknown name (the message lists the supported ones) or
            unsupported model dtype.
    """
    try:
        cls = CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown KV codec {name!r}; supported: {', '.join(CODECS)}") from None
    return cls(shape, model_dtype)


def codec_table(shape: KVShape, model_dtype: torch.dtype, sample_kv: torch.Tensor) -> list[dict[str, Any]]:
    """One row per codec, measured on ``sample_kv [n, L, 2, H, bs, D]``.

    Keys: ``name``, ``bytes_per_token``, ``ratio_vs_native`` (bytes per token
    over native's: 0.25 means four times smaller), ``max_abs``, ``rel_rmse``,
    ``lossless``. A codec that refuses the sample (e.g. fp16 overflow) gets
    ``None`` errors and an ``error`` message instead of aborting the table.
    """
    native_bpt = NativeCodec(shape, model_dtype).bytes_per_token()
    rows: list[dict[str, Any]] = []
    for name in CODECS:
        codec = make_codec(name, shape, model_dtype)
        row: dict[str, Any] = {
            "name": name,
            "bytes_per_token": codec.bytes_per_token(),
            "ratio_vs_native": codec.bytes_per_token() / native_bpt,
            "lossless": codec.lossless,
        }
        try:
            err = codec.measure_error(sample_kv)
        except ValueError as exc:  # the sample is outside what this codec can store
            row.update(max_abs=None, rel_rmse=None, error=str(exc))
        else:
            row.update(max_abs=err.max_abs, rel_rmse=err.rel_rmse)
        rows.append(row)
    return rows
