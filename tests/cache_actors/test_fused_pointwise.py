"""The compiled elementwise kernels give the eager ops' numbers, on every path a wide forward takes.

One compile per test process (a few seconds; inductor needs g++, which this
project's machines and CI have). Where a C++ compiler is missing the runner
must still load and serve with the eager ops: tested by hiding it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from cache_actors.engine import fused_pointwise
from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from cache_actors.engine.demo_model import TINY_SPEC
from cache_actors.engine.fused_pointwise import MIN_TOKENS, CompiledPointwise
from cache_actors.engine.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(fused_pointwise.cpp_compiler() is None, reason="no C++ compiler for inductor")


@pytest.fixture(scope="module")
def runners() -> tuple[ModelRunner, ModelRunner]:
    """(lean forward with the kernels, Transformers' forward) on the same weights."""
    fused = ModelRunner.load(None, demo_spec=TINY_SPEC, fused_pointwise=True)
    plain = ModelRunner.load(None, demo_spec=TINY_SPEC, lean=False)
    assert fused.forward.pointwise is not None
    return fused, plain


def _ids(count: int, seed: int) -> list[int]:
    return torch.randint(3, TINY_SPEC.vocab_size, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("tokens,hidden,heads,dim,inner", [(MIN_TOKENS, 64, 6, 16, 128), (777, 70, 5, 10, 93)])
def test_each_kernel_equals_its_eager_function(tokens: int, hidden: int, heads: int, dim: int, inner: int) -> None:
    """Sizes that are not multiples of a vector register, and a sliced (strided) rotary input as the forward passes."""
    kernels = CompiledPointwise.build(dtype=torch.float32, device=torch.device("cpu"))
    assert kernels is not None
    g = torch.Generator().manual_seed(tokens)
    qkv = torch.randn(tokens, heads + 2, dim, generator=g)
    cos, sin = torch.randn(tokens, 1, dim, generator=g), torch.randn(tokens, 1, dim, generator=g)
    x, residual, weight = (torch.randn(*shape, generator=g) for shape in ((tokens, hidden), (tokens, hidden), (hidden,)))
    gate_up = torch.randn(tokens, 2 * inner, generator=g)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.rotary(qkv[:, :heads], cos, sin, dim // 2),
                                   fused_pointwise.rotary(qkv[:, :heads], cos, sin, dim // 2))
        torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), fused_pointwise.rms_norm(x, weight, 1e-6))
        torch.testing.assert_close(kernels.add_rms_norm(x, residual, weight, 1e-6),
                                   fused_pointwise.add_rms_norm(x, residual, weight, 1e-6))
        torch.testing.assert_close(kernels.silu_mul(gate_up), fused_pointwise.silu_mul(gate_up))
    eager = torch.nn.functional.rms_norm(x, (hidden,), weight, 1e-6)
    torch.testing.assert_close(fused_pointwise.rms_norm(x, weight, 1e-6), eager, rtol=1e-5, atol=1e-5)


def test_a_wide_prefill_fresh_and_on_a_cached_prefix_matches_transformers(runners) -> None:
    fused, plain = runners
    ids = _ids(MIN_TOKENS + 90, seed=1)
    _same(fused.prefill(ids)[0], plain.prefill(ids)[0])
    (_, cache_a), (_, cache_b) = fused.prefill(ids[:40]), plain.prefill(ids[:40])
    _same(fused.prefill(ids, cache_a)[0], plain.prefill(ids, cache_b)[0])  # 560 new tokens after 40 held
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers):
        torch.testing.assert_close(layer_a.keys, layer_b.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer_a.values, layer_b.values, rtol=1e-4, atol=1e-5)


def test_batched_rows_over_the_threshold_match_transformers(runners) -> None:
    """The batcher's prefill of several prompts at once (rows x width >= MIN_TOKENS), on ragged prefixes."""
    results = []
    prompts = [_ids(n, seed=n) for n in (300, 280, 310)]
    starts = [0, 17, 5]
    for runner in runners:
        g = runner.geometry
        kv = RaggedKVBuffer(num_layers=g.num_layers, num_kv_heads=g.num_kv_heads, head_dim=g.head_dim, max_rows=3,
                            max_len=400, dtype=g.dtype)
        for row, (prompt, start) in enumerate(zip(prompts, starts)):
            kv.add_row()
            if start:
                runner.prefill(prompt[:start], kv.row_cache(row, 0))
        results.append((prefill_rows(runner.forward, kv, 0, prompts, starts), kv))
    (logits_a, kv_a), (logits_b, kv_b) = results
    _same(logits_a, logits_b)
    for row, length in enumerate(len(p) for p in prompts):
        torch.testing.assert_close(kv_a.buffer[:, :, row, :, :length], kv_b.buffer[:, :, row, :, :length],
                                   rtol=1e-4, atol=1e-5)


def test_narrow_forwards_skip_the_compiled_kernels(runners, monkeypatch) -> None:
    """A decode step or a short prompt would pay a compiled call's entry cost per layer for nothing
    (they take `pointwise_kernel`'s C++ loops instead: tests/cache_actors/test_pointwise_kernel.py)."""
    fused, _ = runners
    calls: list[str] = []
    kernels = fused.forward.pointwise
    monkeypatch.setattr(kernels, "silu_mul", lambda gate_up: calls.append("wide") or fused_pointwise.silu_mul(gate_up))
    fused.prefill(_ids(MIN_TOKENS - 1, seed=2))
    logits, cache = fused.prefill(_ids(40, seed=3))
    fused.step(int(logits.argmax()), cache)
    assert calls == []
    fused.prefill(_ids(MIN_TOKENS, seed=4))
    assert calls == ["wide"] * TINY_SPEC.num_hidden_layers


def test_without_a_compiler_the_runner_serves_with_the_eager_ops(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert fused_pointwise.cpp_compiler() is None
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC, fused_pointwise=True)
    assert runner.forward.pointwise is None and runner.forward.narrow_pointwise is None
    assert runner.prefill(_ids(MIN_TOKENS + 5, seed=5))[0].isfinite().all()


def test_kernels_that_disagree_with_the_eager_run_stay_off() -> None:
    """`check_kernels` compares a real forward both ways; a mismatch (or a compile error) leaves the eager ops on."""
    state = {"on": None}

    def forward(ids: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.one_hot(ids[:, -1:] % 7, 7).float()
        return logits.roll(1, -1) if state["on"] else logits  # "kernels" that change the greedy token

    def use(on: bool) -> None:
        state["on"] = on

    assert not fused_pointwise.check_kernels(forward, use, vocab=50)
    assert state["on"] is False

    def broken(ids: torch.Tensor) -> torch.Tensor:
        if state["on"]:
            raise RuntimeError("g++ failed")
        return torch.zeros(1, 1, 3)

    assert not fused_pointwise.check_kernels(broken, use, vocab=50) and state["on"] is False
    assert fused_pointwise.check_kernels(lambda ids: torch.ones(1, 1, 3), use, vocab=50) and state["on"] is True


def test_the_runner_cache_path_uses_a_dynamic_cache_on_the_wide_path(runners) -> None:
    """A wide forward hands back a cache later steps extend, as the eager path does."""
    fused, plain = runners
    ids = _ids(MIN_TOKENS + 3, seed=6)
    (logits_a, cache_a), (logits_b, cache_b) = fused.prefill(ids), plain.prefill(ids)
    assert isinstance(cache_a, DynamicCache) and cache_a.get_seq_length() == len(ids)
    _same(logits_a, logits_b)
    token = int(logits_a.argmax())
    _same(fused.step(token, cache_a), plain.step(token, cache_b))
