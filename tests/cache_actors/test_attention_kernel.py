"""Our attention kernel gives SDPA's numbers on every shape the lean forward hands it, and stays off where it cannot.

Built once per machine (~30 s; `.ci/run` builds it before the tests). Skipped
on a CPU without AVX-512 or without a C++ compiler, where the runner keeps
SDPA (tested below by hiding the compiler).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cache_actors.engine import attention_kernel
from cache_actors.engine.attention_kernel import HEAD_DIM, AttentionKernel
from cache_actors.engine.demo_model import DemoModelSpec
from cache_actors.engine.lean_attention import PrefillBias, attend, causal_mask
from cache_actors.engine.model_runner import ModelRunner

CPU = torch.device("cpu")
KERNEL = AttentionKernel.build(torch.float32, CPU, HEAD_DIM)
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no AVX-512 or no C++ compiler: SDPA serves")
# The default demo model's geometry (64-dim heads, 8 query and 4 KV heads), two layers to keep it quick.
SPEC = DemoModelSpec(num_hidden_layers=2)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,width", [(8, 4, 300), (9, 3, 129), (4, 4, 5), (2, 1, 64)])
def test_a_fresh_prompt_equals_causal_sdpa(heads: int, kv_heads: int, width: int) -> None:
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
    """One token (a decode step), other head sizes and other dtypes never reach the kernel."""
    calls = []
    kernel = AttentionKernel(lambda *args: calls.append(args))
    g = torch.Generator().manual_seed(1)
    for dtype, dim, width in ((torch.float32, HEAD_DIM, 1), (torch.float32, 32, 9), (torch.bfloat16, HEAD_DIM, 9)):
        query = torch.randn(1, 4, width, dim, generator=g).to(dtype)
        keys, values = (torch.randn(1, 2, width, dim, generator=g).to(dtype) for _ in range(2))
        attend(query, keys, values, None, width > 1, scale=dim**-0.5, num_kv_heads=2, kernel=kernel)
    assert calls == []


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
def test_a_kernel_that_differs_from_sdpa_stays_off() -> None:
    wrong = AttentionKernel(lambda q, k, v, bias, scale, block, width, past: torch.zeros_like(q))
    assert attention_kernel.check(wrong) is not None
    assert attention_kernel.check(KERNEL) is None


def test_where_it_cannot_run_the_runner_keeps_sdpa(monkeypatch) -> None:
    assert AttentionKernel.build(torch.bfloat16, CPU, HEAD_DIM) is None
    assert AttentionKernel.build(torch.float32, CPU, 16) is None
    monkeypatch.setenv("PATH", "/nonexistent")
    assert AttentionKernel.build(torch.float32, CPU, HEAD_DIM) is None
    runner = ModelRunner.load(None, demo_spec=SPEC, attention_kernel=True)
    assert runner.forward.attention is None
    assert runner.prefill(list(range(3, 40)))[0].isfinite().all()
