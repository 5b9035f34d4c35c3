"""KV block codecs: layout, exactness, error bounds, in-place decode."""

from __future__ import annotations

import math

import pytest
import torch

from cache_actors.codecs import (
    CODECS,
    MODEL_DTYPES,
    Bf16Codec,
    Codec,
    Fp16Codec,
    Int4Codec,
    Int8Codec,
    KVShape,
    NativeCodec,
    codec_table,
    make_codec,
)

SMALL = KVShape(num_layers=2, num_kv_heads=2, head_dim=16, block_size=16)
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
LOSSY_QUANT = ("int8", "int4")

codec_names = pytest.mark.parametrize("name", list(CODECS))
model_dtypes = pytest.mark.parametrize("dtype", MODEL_DTYPES, ids=lambda d: DTYPE_IDS[d])


def gaussian_kv(shape: KVShape, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Gaussian KV with a few key channels 8x larger (the outlier channels KIVI targets)."""
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn((n, *shape.block_shape()), generator=g)
    kv[:, :, 0, :, :, :: max(1, shape.head_dim // 4)] *= 8.0
    return kv.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bit patterns, so -0.0 vs 0.0 and NaN payloads count as different."""
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.fixture(scope="module")
def llama_kv() -> tuple[KVShape, torch.Tensor]:
    """KV of a tiny random LlamaForCausalLM over 64 tokens, as [n, L, 2, H, bs, D] float32 blocks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 64, (1, 64))
    with torch.no_grad():
        out = model(tokens, use_cache=True)
    cache = out["cache"] if "cache" in out else out.past_key_values
    layers = [torch.stack((layer.keys[0], layer.values[0])) for layer in cache.layers]  # [2, H, T, D] each
    kv = torch.stack(layers)  # [L, 2, H, T, D]
    shape = KVShape(num_layers=2, num_kv_heads=2, head_dim=16, block_size=16)
    L, _, H, T, D = kv.shape
    assert (L, H, D) == (2, 2, 16) and T == 64
    blocks = kv.reshape(L, 2, H, T // shape.block_size, shape.block_size, D).permute(3, 0, 1, 2, 4, 5)
    return shape, blocks.contiguous()


# --- layout ---------------------------------------------------------------------


@codec_names
@model_dtypes
def test_round_trip_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    kv = gaussian_kv(SMALL, 3, dtype)
    parts = codec.encode(kv)
    specs = codec.part_specs()
    assert list(parts) == list(specs)
    for part, (shape, part_dtype) in specs.items():
        assert tuple(parts[part].shape) == (3, *shape) and parts[part].dtype == part_dtype
    decoded = codec.decode(parts)
    assert decoded.shape == kv.shape and decoded.dtype == dtype and decoded.is_contiguous()


@codec_names
@model_dtypes
def test_bytes_per_token_is_the_size_of_the_parts(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    parts = codec.encode(gaussian_kv(SMALL, 2, dtype))
    stored = sum(t.numel() * t.element_size() for t in parts.values())
    assert codec.bytes_per_block() * 2 == stored
    assert codec.bytes_per_token() == stored / (2 * SMALL.block_size)
    pool = codec.empty_parts(5)
    assert sum(t.numel() * t.element_size() for t in pool.values()) == 5 * codec.bytes_per_block()


def test_bytes_per_token_by_hand() -> None:
    shape = KVShape(num_layers=8, num_kv_heads=4, head_dim=64, block_size=64)
    values_per_token = 2 * 8 * 4 * 64
    # Scale + min: per key channel (8*4*64 per block) and per value token (8*4 per token).
    stats_per_token = 2 * (8 * 4 * 64 / 64 + 8 * 4)
    f32 = {name: make_codec(name, shape, torch.float32).bytes_per_token() for name in CODECS}
    assert f32["native"] == values_per_token * 4
    assert f32["fp16"] == f32["bf16"] == values_per_token * 2
    assert f32["int8"] == values_per_token + stats_per_token * 4
    assert f32["int4"] == values_per_token / 2 + stats_per_token * 4
    assert f32["int8"] < f32["native"] / 3 and f32["int4"] < f32["int8"]
    bf16 = {name: make_codec(name, shape, torch.bfloat16).bytes_per_token() for name in LOSSY_QUANT}
    assert bf16["int8"] == values_per_token + stats_per_token * 2


def test_unknown_codec_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="unknown KV codec 'zstd'.*native, fp16, bf16, int8, int4"):
        make_codec("zstd", SMALL, torch.float32)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        KVShape(num_layers=2, num_kv_heads=2, head_dim=0, block_size=16)
    with pytest.raises(ValueError, match="unsupported model dtype"):
        make_codec("native", SMALL, torch.float64)
    codec = make_codec("int8", SMALL, torch.float32)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(torch.zeros(2, 2, 2, 2, 15, 16))
    with pytest.raises(ValueError, match="model dtype"):
        codec.encode(gaussian_kv(SMALL, 1, torch.float16))
    parts = codec.encode(gaussian_kv(SMALL, 2, torch.float32))
    with pytest.raises(ValueError, match="expected parts"):
        codec.decode({k: v for k, v in parts.items() if k != "v_min"})
    with pytest.raises(ValueError, match="part 'k_scale'"):
        codec.decode({**parts, "k_scale": parts["k_scale"][:1]})
    with pytest.raises(ValueError, match="model dtype"):
        codec.decode_into(parts, torch.empty(2, *SMALL.block_shape(), dtype=torch.float16))


# --- exactness and bounds -------------------------------------------------------------


def test_lossless_flag_follows_the_model_dtype() -> None:
    assert NativeCodec.lossless and not Fp16Codec.lossless and not Bf16Codec.lossless
    assert not Int8Codec.lossless and not Int4Codec.lossless
    for dtype in MODEL_DTYPES:
        assert make_codec("fp16", SMALL, dtype).lossless == (dtype == torch.float16)
        assert make_codec("bf16", SMALL, dtype).lossless == (dtype == torch.bfloat16)
    assert make_codec("bf16", SMALL, torch.bfloat16).error_bound == "exact"


LOSSLESS_CASES = [
    pytest.param(name, dtype, id=f"{name}-{DTYPE_IDS[dtype]}")
    for name in CODECS
    for dtype in MODEL_DTYPES
    if make_codec(name, SMALL, dtype).lossless
]


@pytest.mark.parametrize(("name", "dtype"), LOSSLESS_CASES)
def test_lossless_codecs_are_bit_exact(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    kv = gaussian_kv(SMALL, 3, dtype)
    info = torch.finfo(dtype)
    flat = kv.view(-1)
    flat[:6] = torch.tensor([-0.0, info.tiny / 4, -info.tiny, info.max, -info.max, info.eps], dtype=torch.float64).to(dtype)
    assert torch.equal(bits(codec.decode(codec.encode(kv))), bits(kv))
    assert codec.measure_error(kv).max_abs == 0.0


@codec_names
@model_dtypes
def test_every_element_is_within_the_stated_bound(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    kv = gaussian_kv(SMALL, 4, dtype, seed=1)
    parts = codec.encode(kv)
    err = (codec.decode(parts).to(torch.float64) - kv.to(torch.float64)).abs()
    bound = codec.abs_error_bound(kv, parts)
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("name", LOSSY_QUANT)
@model_dtypes
def test_quant_bound_is_tight_and_scales_are_the_natural_ones(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    assert isinstance(codec, (Int8Codec, Int4Codec))
    kv = gaussian_kv(SMALL, 4, dtype, seed=2)
    parts = codec.encode(kv)
    x = kv.to(torch.float64)
    k_range = x[:, :, 0].amax(-2) - x[:, :, 0].amin(-2)
    v_range = x[:, :, 1].amax(-1) - x[:, :, 1].amin(-1)
    for scale, spread in ((parts["k_scale"], k_range), (parts["v_scale"], v_range)):
        ideal = spread / codec.qmax
        assert bool((scale.to(torch.float64) >= ideal).all())
        assert bool((scale.to(torch.float64) <= ideal * (1 + 2 * torch.finfo(dtype).eps)).all())
    # Half a step is actually reached somewhere: the bound is not loose by construction.
    err = (codec.decode(parts).to(torch.float64) - x).abs()
    half_step = codec.group_stats(parts, "scale") / 2
    assert (err / half_step).max().item() > 0.9


@codec_names
@model_dtypes
def test_rel_rmse_on_gaussian_and_llama_kv(name: str, dtype: torch.dtype, llama_kv) -> None:
    shape, blocks = llama_kv
    codec = make_codec(name, shape, dtype)
    for kv in (gaussian_kv(shape, 4, dtype, seed=3), blocks.to(dtype)):
        err = codec.measure_error(kv)
        assert err.rel_rmse <= codec.rel_rmse_bound, (name, err)
        if codec.lossless:
            assert err == type(err)(0.0, 0.0, 0.0)
        elif name in LOSSY_QUANT:
            assert err.rel_rmse > 0  # 0 would mean the test data is degenerate


@pytest.mark.parametrize("name", LOSSY_QUANT)
def test_keys_are_per_channel_and_values_per_token(name: str) -> None:
    """An outlier only coarsens its own key channel / value token."""
    kv = gaussian_kv(SMALL, 1, torch.float32, seed=4)
    codec = make_codec(name, SMALL, torch.float32)
    assert isinstance(codec, (Int8Codec, Int4Codec))
    parts = codec.encode(kv)
    spiked = kv.clone()
    spiked[0, 0, 0, 0, 3, 5] = 1000.0  # key channel 5 of (layer 0, head 0)
    spiked[0, 0, 1, 0, 7, 2] = 1000.0  # value token 7 of (layer 0, head 0)
    spiked_parts = codec.encode(spiked)
    untouched = torch.ones_like(kv, dtype=torch.bool)
    untouched[0, 0, 0, 0, :, 5] = False
    untouched[0, 0, 1, 0, 7, :] = False
    err = (codec.decode(parts) - kv).abs()
    spiked_err = (codec.decode(spiked_parts) - spiked).abs()
    assert torch.equal(spiked_err[untouched], err[untouched])
    scale, spiked_scale = codec.group_stats(parts, "scale"), codec.group_stats(spiked_parts, "scale")
    assert torch.equal(spiked_scale[untouched], scale[untouched])
    assert bool((spiked_scale[~untouched] > 990 / codec.qmax).all())


@codec_names
@model_dtypes
def test_constant_and_zero_blocks_are_exact(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    zeros = torch.zeros((2, *SMALL.block_shape()), dtype=dtype)
    assert torch.equal(bits(codec.decode(codec.encode(zeros))), bits(zeros))
    # 0.1 is not representable in the 16-bit formats: only exact codecs (and
    # the quantizers, whose min is stored in the model dtype) must keep it.
    const = torch.full((2, *SMALL.block_shape()), 0.1, dtype=dtype)
    const[1] = -3.25
    if codec.lossless or name in LOSSY_QUANT:
        assert torch.equal(codec.decode(codec.encode(const)), const)
    # Keys constant per channel and values constant per token: every quantization group is flat.
    g = torch.Generator().manual_seed(5)
    kv = torch.empty((2, *SMALL.block_shape()), dtype=dtype)
    kv[:, :, 0] = torch.randn(2, 2, 2, 1, 16, generator=g).to(dtype)
    kv[:, :, 1] = torch.randn(2, 2, 2, 16, 1, generator=g).to(dtype)
    if name in LOSSY_QUANT:
        assert torch.equal(codec.decode(codec.encode(kv)), kv)


@codec_names
@model_dtypes
def test_non_finite_kv_is_refused_by_lossy_codecs(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    kv = gaussian_kv(SMALL, 1, dtype)
    kv[0, 1, 1, 0, 2, 3] = math.nan
    if codec.lossless:
        assert torch.equal(bits(codec.decode(codec.encode(kv))), bits(kv))
    else:
        with pytest.raises(ValueError, match="NaN or inf"):
            codec.encode(kv)


def test_fp16_refuses_values_it_would_overflow() -> None:
    kv = gaussian_kv(SMALL, 1, torch.float32)
    kv[0, 0, 0, 0, 0, 0] = 1e5
    with pytest.raises(ValueError, match="overflow"):
        make_codec("fp16", SMALL, torch.float32).encode(kv)
    rows = {row["name"]: row for row in codec_table(SMALL, torch.float32, kv)}
    assert rows["fp16"]["rel_rmse"] is None and "overflow" in rows["fp16"]["error"]
    assert rows["int8"]["rel_rmse"] is not None


# --- decode into the cache's buffers ------------------------------------------------


@codec_names
@model_dtypes
def test_decode_into_a_permuted_view_matches_decode(name: str, dtype: torch.dtype) -> None:
    codec = make_codec(name, SMALL, dtype)
    n = 3
    parts = codec.encode(gaussian_kv(SMALL, n, dtype, seed=6))
    expected = codec.decode(parts)
    L, _, H, bs, D = SMALL.block_shape()
    # The caller's buffer is [L, 2, H, slots, bs, D]; it decodes into slots 1..3.
    buffer = torch.full((L, 2, H, n + 2, bs, D), 7.0, dtype=dtype)
    view = buffer[:, :, :, 1 : n + 1].permute(3, 0, 1, 2, 4, 5)
    assert not view.is_contiguous()
    codec.decode_into(parts, view)
    assert torch.equal(bits(buffer[:, :, :, 1 : n + 1].permute(3, 0, 1, 2, 4, 5)), bits(expected))
    assert bool((buffer[:, :, :, 0] == 7.0).all()) and bool((buffer[:, :, :, n + 1] == 7.0).all())


@codec_names
def test_odd_head_dim_and_block_size(name: str) -> None:
    shape = KVShape(num_layers=1, num_kv_heads=3, head_dim=5, block_size=3)
    codec = make_codec(name, shape, torch.float32)
    kv = gaussian_kv(shape, 2, torch.float32, seed=7)
    parts = codec.encode(kv)
    err = (codec.decode(parts).to(torch.float64) - kv.to(torch.float64)).abs()
    assert bool((err <= codec.abs_error_bound(kv, parts)).all())


def test_int4_nibble_layout() -> None:
    """Codes are packed over the flattened block, even index in the low nibble (persisted format)."""
    shape = KVShape(num_layers=1, num_kv_heads=1, head_dim=4, block_size=2)
    kv = torch.zeros((1, *shape.block_shape()))
    kv[0, 0, 0, 0] = torch.tensor([[0.0, 0, 0, 0], [15, 15, 15, 15]])  # per channel: min 0, max 15 -> scale 1
    kv[0, 0, 1, 0] = torch.tensor([[0.0, 1, 2, 15], [15, 3, 0, 4]])  # per token: min 0, max 15 -> scale 1
    parts = make_codec("int4", shape, torch.float32).encode(kv)
    codes = [0, 0, 0, 0, 15, 15, 15, 15, 0, 1, 2, 15, 15, 3, 0, 4]
    packed = [lo | (hi << 4) for lo, hi in zip(codes[0::2], codes[1::2])]
    assert parts["q"].tolist() == [packed]
    assert torch.equal(make_codec("int4", shape, torch.float32).decode(parts), kv)


# --- table ----------------------------------------------------------------------


def test_codec_table(llama_kv) -> None:
    shape, blocks = llama_kv
    rows = codec_table(shape, torch.float32, blocks)
    assert [row["name"] for row in rows] == list(CODECS)
    by_name = {row["name"]: row for row in rows}
    assert by_name["native"]["ratio_vs_native"] == 1.0 and by_name["native"]["max_abs"] == 0.0
    assert by_name["fp16"]["ratio_vs_native"] == 0.5 and not by_name["fp16"]["lossless"]
    # bs = D = 16 here: the float32 scales and mins cost 1 byte per value on top of the codes.
    assert by_name["int4"]["ratio_vs_native"] < by_name["int8"]["ratio_vs_native"] == 1.5 / 4
    assert 0 < by_name["int8"]["rel_rmse"] < by_name["int4"]["rel_rmse"] <= Int4Codec.rel_rmse_bound
    for row in rows:
        assert row["bytes_per_token"] == make_codec(row["name"], shape, torch.float32).bytes_per_token()


def test_all_codecs_implement_the_interface() -> None:
    for name, cls in CODECS.items():
        assert issubclass(cls, Codec) and cls.name == name
        assert isinstance(cls.error_bound, str) and cls.error_bound
        assert isinstance(cls.lossless, bool)
