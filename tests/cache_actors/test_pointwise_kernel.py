"""The narrow forward's C++ elementwise kernels give the eager ops' numbers, and the runner decodes the same tokens
with them as without; where they cannot be built the runner serves with the eager ops.

Built once per machine (a few seconds). Skipped on a CPU without AVX2 or without a C++ compiler.
"""

from __future__ import annotations

import pytest
import torch

from cache_actors.engine import fused_pointwise, pointwise_kernel
from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from cache_actors.engine.demo_model import DemoModelSpec
from cache_actors.engine.fused_pointwise import MIN_TOKENS
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.pointwise_kernel import PointwiseKernels
from tests.cache_actors.greedy_decode import greedy_steps

CPU = torch.device("cpu")
KERNELS = PointwiseKernels.build(torch.float32, CPU)
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no AVX2 or no C++ compiler: the eager ops serve")
SPEC = DemoModelSpec(num_hidden_layers=2)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens,hidden,heads,kv_heads,dim", [(1, 576, 9, 3, 64), (16, 256, 8, 4, 64), (7, 37, 2, 1, 6),
                                                              (3, 8, 1, 1, 18)])
def test_each_kernel_equals_its_eager_function(tokens: int, hidden: int, heads: int, kv_heads: int, dim: int) -> None:
    """Widths that fill the 8-float vectors and widths that leave a tail; the strided q|k view of a fused product."""
    g = torch.Generator().manual_seed(tokens * hidden)
    x, residual = torch.randn(tokens, hidden, generator=g), torch.randn(tokens, hidden, generator=g)
    weight = torch.randn(hidden, generator=g)
    _close(KERNELS.rms_norm(x, weight, 1e-5), fused_pointwise.rms_norm(x, weight, 1e-5))
    for got, want in zip(KERNELS.add_rms_norm(x, residual, weight, 1e-6),
                         fused_pointwise.add_rms_norm(x, residual, weight, 1e-6)):
        _close(got, want)
    qkv = torch.randn(tokens, heads + 2 * kv_heads, dim, generator=g)
    angles = torch.randn(tokens, 1, dim, generator=g) * 40  # positions far into a long context
    qk = qkv[:, : heads + kv_heads]
    _close(KERNELS.rotary(qk, angles.cos(), angles.sin(), dim // 2),
           fused_pointwise.rotary(qk, angles.cos(), angles.sin(), dim // 2))
    gate_up = torch.randn(tokens, 2 * hidden, generator=g) * 30  # far into both tails of the sigmoid
    _close(KERNELS.silu_mul(gate_up), fused_pointwise.silu_mul(gate_up))


def test_bad_arguments_are_refused_not_read_out_of_bounds() -> None:
    x = torch.randn(2, 16)
    with pytest.raises(RuntimeError, match="weight"):
        KERNELS.rms_norm(x, torch.randn(15), 1e-5)
    with pytest.raises(RuntimeError, match="shape"):
        KERNELS.add_rms_norm(x, torch.randn(3, 16), torch.randn(16), 1e-5)
    with pytest.raises(RuntimeError, match="float32"):
        KERNELS.silu_mul(x.double())
    with pytest.raises(RuntimeError, match="rotary"):
        KERNELS.rotary(torch.randn(2, 3, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8), 3)


def test_a_kernel_that_differs_stays_off() -> None:
    wrong = PointwiseKernels(KERNELS.rotary, lambda x, w, eps: x, KERNELS.add_rms_norm, KERNELS.silu_mul)
    assert pointwise_kernel.check(wrong).startswith("rms_norm")
    wrong = PointwiseKernels(KERNELS.rotary, KERNELS.rms_norm, KERNELS.add_rms_norm, lambda gate_up: gate_up[:, ::2])
    assert pointwise_kernel.check(wrong).startswith("silu_mul")
    assert pointwise_kernel.check(KERNELS) is None


def test_the_runner_decodes_a_ragged_batch_and_a_short_prompt_as_with_the_eager_ops() -> None:
    """The continuous batcher's path (prompts of their own lengths, then decode steps) and a short cached prefill."""
    with_kernels = ModelRunner.load(None, demo_spec=SPEC, fused_pointwise=True)
    eager = ModelRunner.load(None, demo_spec=SPEC)
    assert with_kernels.forward.narrow_pointwise is not None and eager.forward.narrow_pointwise is None
    calls = []
    real = with_kernels.forward.narrow_pointwise
    with_kernels.forward.narrow_pointwise = PointwiseKernels(
        real.rotary, real.rms_norm, real.add_rms_norm, lambda gate_up: calls.append(gate_up.shape[0]) or real.silu_mul(gate_up))
    prompts = [torch.randint(3, SPEC.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (90, 7, 41)]
    outputs = []
    for runner in (with_kernels, eager):
        geometry = runner.geometry
        kv = RaggedKVBuffer(num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads, head_dim=geometry.head_dim,
                            max_rows=3, max_len=160, dtype=geometry.dtype)
        for _ in prompts:
            kv.add_row()
        logits = prefill_rows(runner.forward, kv, 0, prompts, [0, 0, 0])
        outputs.append(torch.stack(greedy_steps(runner.forward, kv, logits, 6)))
    assert calls.count(3) == 6 * SPEC.num_hidden_layers  # every decode step of the three rows went through them
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    assert torch.equal(outputs[0].argmax(-1), outputs[1].argmax(-1))
    ids = prompts[0] + prompts[1]
    cached = [runner.prefill(ids, runner.prefill(prompts[0])[1])[0] for runner in (with_kernels, eager)]
    torch.testing.assert_close(cached[0], cached[1], rtol=1e-4, atol=1e-4)
    calls.clear()
    with_kernels.prefill(torch.randint(3, SPEC.vocab_size, (MIN_TOKENS,)).tolist())
    assert calls == []  # a wide forward is not theirs


def test_where_they_cannot_run_the_runner_keeps_the_eager_ops(monkeypatch) -> None:
    assert PointwiseKernels.build(torch.bfloat16, CPU) is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert PointwiseKernels.build(torch.float32, CPU) is None
    monkeypatch.undo()
    monkeypatch.setenv("PATH", "/nonexistent")
    runner = ModelRunner.load(None, demo_spec=SPEC, fused_pointwise=True)
    assert runner.forward.narrow_pointwise is None
    assert runner.prefill(list(range(3, 40)))[0].isfinite().all()
