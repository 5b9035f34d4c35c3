"""Our attention kernel gives SDPA's numbers on every shape the lean forward hands it, and stays off where it cannot.

Built once per machine (~30 s; `.ci/run` builds it before the tests), for
AVX-512 or AVX2 (each has its own build; a machine tests the one it runs).
Skipped without either or without a C++ compiler, where the runner keeps
SDPA (tested below by hiding the compiler).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cache_actors.engine import attention_kernel
from cache_actors.engine.attention_kernel import HEAD_DIM, AttentionKernel
from cache_actors.engine.demo_model import DemoModelSpec
from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from cache_actors.engine.lean_attention import PrefillBias, additive_bias, attend, attend_decode, causal_mask
from cache_actors.engine.model_runner import ModelRunner
from tests.cache_actors.greedy_decode import greedy_steps

CPU = torch.device("cpu")
KERNEL = AttentionKernel.build(torch.float32, CPU, HEAD_DIM)
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="neither AVX-512 nor AVX2, or no C++ compiler: SDPA serves")
# The default demo model's geometry (64-dim heads, 8 query and 4 KV heads), two layers to keep it quick.
SPEC = DemoModelSpec(num_hidden_layers=2)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,width", [(8, 4, 300), (9, 3, 129), (4, 4, 5), (2, 1, 64), (9, 3, 967)])
def test_a_fresh_prompt_equals_causal_sdpa(heads: int, kv_heads: int, width: int) -> None:
    # 967 x 3 = 2,901 query rows: blocks rounded up to whole 6-row tiles once left the last block none (a crash).
    g = torch.Generator().manual_seed(width)
    query = torch.randn(1, heads, width, HEAD_DIM, generator=g)
    keys, values = (torch.randn(1, kv_heads, width, HEAD_DIM, generator=g) for _ in range(2))
    got = attend(query, keys, values, None, True, scale=HEAD_DIM**-0.5, num_kv_heads=kv_heads, kernel=KERNEL)
    want = F.scaled_dot_product_attention(query, keys, values, is_causal=True, enable_gqa=heads > kv_heads)
    _close(got, want)


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,width,past", [(8, 4, 65, 1984), (9, 3, 7, 70), (8, 4, 2, 63)])
def test_new_tokens_on_a_cached_prefix_equal_sdpa(heads: int, kv_heads: int, width: int, past: int) -> None:
    g = torch.Generator().manual_seed(past)
    query = torch.randn(1, heads, width, HEAD_DIM, generator=g)
    keys, values = (torch.randn(1, kv_heads, past + width, HEAD_DIM, generator=g) for _ in range(2))
    mask, causal = causal_mask(None, width, past, CPU)
    bias = PrefillBias.build(mask, heads // kv_heads)
    got = attend(query, keys, values, mask, causal, scale=HEAD_DIM**-0.5, num_kv_heads=kv_heads, prefill_bias=bias,
                 kernel=KERNEL)
    _close(got, F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True))


@needs_kernel
@pytest.mark.parametrize("width,past", [(3, 5), (7, 57), (2, 2000), (13, 115), (2, 62), (70, 0)])
def test_key_counts_at_and_around_the_blocks_edges_equal_sdpa(width: int, past: int) -> None:
    """K is transposed in blocks of 64 keys (8 at a time with AVX2, the rest one by one) and query rows go in tiles:
    key counts of 8, 64, 2,002 (a power-of-two padded width), 128, 65 and 70, row counts that fill no whole tile."""
    g = torch.Generator().manual_seed(width + past)
    query = torch.randn(1, 9, width, HEAD_DIM, generator=g)
    keys, values = (torch.randn(1, 3, past + width, HEAD_DIM, generator=g) for _ in range(2))
    stacked = query.reshape(1, 3, 3 * width, HEAD_DIM)
    got = KERNEL.causal(stacked, keys, values, width, HEAD_DIM**-0.5).view_as(query)
    mask = causal_mask(None, width, past, CPU)[0]
    _close(got, F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=True))


@needs_kernel
def test_ragged_rows_and_a_row_with_nothing_to_attend_equal_sdpa() -> None:
    """A batched prefill: rows of their own lengths; a padded query row attends to nothing (zeros, as SDPA)."""
    g = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, width, kv = 3, 8, 4, 9, 140
    query = torch.randn(rows, heads, width, HEAD_DIM, generator=g)
    keys, values = (torch.randn(rows, kv_heads, kv, HEAD_DIM, generator=g) for _ in range(2))
    mask = torch.zeros(rows, 1, width, kv, dtype=torch.bool)
    for row, (start, count) in enumerate([(0, 9), (70, 4), (131, 9)]):
        for token in range(count):
            mask[row, 0, token, : start + token + 1] = True
    bias = PrefillBias.build(mask, heads // kv_heads)
    got = attend(query, keys, values, mask, False, scale=0.3, num_kv_heads=kv_heads, prefill_bias=bias, kernel=KERNEL)
    want = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.3, enable_gqa=True)
    _close(got, want)
    assert got[1, :, 4:].abs().max() == 0  # row 1's padded queries


@needs_kernel
def test_shapes_it_does_not_compute_go_to_sdpa(monkeypatch) -> None:
    """One token through `attend` (decode steps go to `attend_decode`), other head sizes and dtypes never reach it."""
    calls = []
    kernel = AttentionKernel(lambda *args: calls.append(args), lambda *args: calls.append(args))
    g = torch.Generator().manual_seed(1)
    for dtype, dim, width in ((torch.float32, HEAD_DIM, 1), (torch.float32, 32, 9), (torch.bfloat16, HEAD_DIM, 9),
                              (torch.float32, 32, 1), (torch.bfloat16, HEAD_DIM, 1)):
        query = torch.randn(1, 4, width, dim, generator=g).to(dtype)
        keys, values = (torch.randn(1, 2, width, dim, generator=g).to(dtype) for _ in range(2))
        attend(query, keys, values, None, width > 1, scale=dim**-0.5, num_kv_heads=2, kernel=kernel)
        if width == 1 and (dtype, dim) != (torch.float32, HEAD_DIM):
            attend_decode(query, keys, values, torch.zeros(1, 1, 1, 1, dtype=dtype), scale=dim**-0.5, num_kv_heads=2,
                          kernel=kernel)
    assert calls == []


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads", [(8, 4), (9, 3), (4, 4), (8, 1), (10, 2)])
def test_a_ragged_decode_step_equals_sdpa_reading_the_batch_buffer_in_place(heads: int, kv_heads: int) -> None:
    """Rows of their own lengths (one of a single token) as strided views of a longer buffer, as `RaggedKVBuffer`
    hands them over; 8 and 5 query heads per KV head take the kernel's chunks of 4."""
    g = torch.Generator().manual_seed(heads)
    lengths = torch.tensor([130, 1, 64, 65, 17])
    rows, kv = len(lengths), int(lengths.max())
    buffer = torch.randn(2, rows, kv_heads, kv + 40, HEAD_DIM, generator=g)
    keys, values = buffer[0, :, :, :kv], buffer[1, :, :, :kv]
    query = torch.randn(rows, 16, heads, HEAD_DIM, generator=g).transpose(1, 2)[:, :, :1]  # the fused path's strides
    mask = (torch.arange(kv)[None, :] < lengths[:, None])[:, None, None, :]
    bias = additive_bias(mask)
    got = attend_decode(query, keys, values, bias, scale=0.2, num_kv_heads=kv_heads, kernel=KERNEL)
    want = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.2, enable_gqa=heads > kv_heads)
    _close(got, want)
    _close(got, attend_decode(query, keys, values, bias, scale=0.2, num_kv_heads=kv_heads))


@needs_kernel
def test_the_demo_model_decodes_a_ragged_batch_as_without_the_kernel() -> None:
    """The continuous batcher's path: prompts of their own lengths in one batch buffer, then decode steps."""
    outputs = []
    for kernel in (True, False):
        runner = ModelRunner.load(None, demo_spec=SPEC, attention_kernel=kernel)
        assert (runner.forward.attention is not None) is kernel
        geometry = runner.geometry
        kv = RaggedKVBuffer(num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads,
                            head_dim=geometry.head_dim, max_rows=3, max_len=256, dtype=geometry.dtype)
        prompts = [torch.randint(3, SPEC.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
                   for n in (150, 7, 66)]
        for _ in prompts:
            kv.add_row()
        logits = prefill_rows(runner.forward, kv, 0, prompts, [0, 0, 0])
        outputs.append(torch.stack(greedy_steps(runner.forward, kv, logits, 6)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    assert torch.equal(outputs[0].argmax(-1), outputs[1].argmax(-1))


@needs_kernel
def test_the_demo_model_prefills_as_with_sdpa_fresh_cached_and_batched() -> None:
    """The runner with the kernel against the runner without it, on the demo model's 64-dim heads."""
    with_kernel = ModelRunner.load(None, demo_spec=SPEC, attention_kernel=True)
    without = ModelRunner.load(None, demo_spec=SPEC)
    assert with_kernel.forward.attention is not None and without.forward.attention is None
    ids = torch.randint(3, SPEC.vocab_size, (600,), generator=torch.Generator().manual_seed(2)).tolist()
    (fresh_a, cache_a), (fresh_b, cache_b) = with_kernel.prefill(ids[:530]), without.prefill(ids[:530])
    torch.testing.assert_close(fresh_a, fresh_b, rtol=1e-4, atol=1e-4)
    assert torch.equal(fresh_a.argmax(-1), fresh_b.argmax(-1))
    cached_a, cached_b = with_kernel.prefill(ids, cache_a)[0], without.prefill(ids, cache_b)[0]
    torch.testing.assert_close(cached_a, cached_b, rtol=1e-4, atol=1e-4)
    assert torch.equal(cached_a.argmax(-1), cached_b.argmax(-1))


@needs_kernel
def test_new_tokens_over_held_ones_take_the_causal_mode_and_a_given_mask_the_bias(monkeypatch) -> None:
    """A prompt on a cached prefix (no mask given) needs no bias: none is built, the kernel's causal mode runs.
    The batcher's batched prefill gives a mask: that one still goes through the bias."""
    runner = ModelRunner.load(None, demo_spec=SPEC, attention_kernel=True)
    real, modes = runner.forward.attention, []

    def spy(*args):  # noqa: ANN002 - attend's arguments: causal_width is the 7th
        modes.append("causal" if args[6] else "masked")
        return real._attend(*args)

    runner.forward.attention = AttentionKernel(spy, real._decode)
    ids = torch.randint(3, SPEC.vocab_size, (300,), generator=torch.Generator().manual_seed(5)).tolist()
    with monkeypatch.context() as patched:
        patched.setattr(PrefillBias, "build", lambda *a, **k: pytest.fail("a bias was built"))
        runner.prefill(ids, runner.prefill(ids[:200])[1])
    assert modes == ["causal"] * 2 * SPEC.num_hidden_layers
    modes.clear()
    geometry = runner.geometry
    kv = RaggedKVBuffer(num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads, head_dim=geometry.head_dim,
                        max_rows=2, max_len=128, dtype=geometry.dtype)
    kv.add_row(), kv.add_row()
    prefill_rows(runner.forward, kv, 0, [ids[:40], ids[:9]], [0, 0])
    assert modes == ["masked"] * SPEC.num_hidden_layers


@needs_kernel
def test_a_kernel_that_differs_from_sdpa_stays_off() -> None:
    wrong = AttentionKernel(lambda q, k, v, bias, scale, block, width, past: torch.zeros_like(q), KERNEL._decode)
    assert attention_kernel.check(wrong) is not None
    wrong_decode = AttentionKernel(KERNEL._attend, lambda q, k, v, bias, scale: torch.zeros_like(q))
    assert attention_kernel.check(wrong_decode).startswith("decode")
    assert attention_kernel.check(KERNEL) is None


def test_where_it_cannot_run_the_runner_keeps_sdpa(monkeypatch) -> None:
    assert AttentionKernel.build(torch.bfloat16, CPU, HEAD_DIM) is None
    assert AttentionKernel.build(torch.float32, CPU, 16) is None
    monkeypatch.setenv("PATH", "/nonexistent")
    assert AttentionKernel.build(torch.float32, CPU, HEAD_DIM) is None
    runner = ModelRunner.load(None, demo_spec=SPEC, attention_kernel=True)
    assert runner.forward.attention is None
    assert runner.prefill(list(range(3, 40)))[0].isfinite().all()
