"""The lean Llama forward gives Transformers' logits on every path the engine takes.

Bit for bit on this project's machine; the checks allow float rounding
(1e-5) so a CPU whose fused RMSNorm or GEMM blocking rounds differently
still passes, and require the same greedy tokens everywhere.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from cache_actors.engine.demo_model import TINY_SPEC, build_demo_model
from cache_actors.engine.lean_llama import LeanLlama, SliceOfFused, fuse_projections, lean_unsupported
from cache_actors.engine.model_runner import ModelRunner
from tests.cache_actors.greedy_decode import greedy_steps


@pytest.fixture(scope="module", params=[True, False], ids=["packed", "plain"])
def pair(request) -> tuple[ModelRunner, ModelRunner]:
    """(lean runner, Transformers runner) on the same weights, packed or not."""
    lean = ModelRunner.load(None, demo_spec=TINY_SPEC, packed_weights=request.param)
    plain = ModelRunner.load(None, demo_spec=TINY_SPEC, packed_weights=request.param, lean=False)
    assert lean.lean and not plain.lean
    return lean, plain


def same(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal to float rounding, with the same greedy choice wherever there are logits."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if got.dim() and got.shape[-1] > 1 and got.is_floating_point():
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    return True


def _ids(count: int, seed: int = 0) -> list[int]:
    return torch.randint(3, TINY_SPEC.vocab_size, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_prefix_and_steps_match_transformers(pair) -> None:
    lean, plain = pair
    ids = _ids(70)
    (a, cache_a), (b, cache_b) = lean.prefill(ids[:40]), plain.prefill(ids[:40])
    assert same(a, b)
    (a, cache_a), (b, cache_b) = lean.prefill(ids, cache_a), plain.prefill(ids, cache_b)  # on a cached prefix
    assert same(a, b)
    for token in ids[:5]:  # single-sequence decode, no mask
        assert same(lean.step(token, cache_a), plain.step(token, cache_b))
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers):
        torch.testing.assert_close(layer_a.keys, layer_b.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer_a.values, layer_b.values, rtol=1e-5, atol=1e-5)


def test_all_logits_and_chosen_positions_match(pair) -> None:
    lean, plain = pair
    ids = torch.tensor([_ids(33, seed=1)])
    with torch.inference_mode():
        for keep in (0, 1, 5, torch.tensor([0, 7, 32])):
            got = lean.forward(input_ids=ids, cache=DynamicCache(), logits_to_keep=keep).logits
            want = plain.forward(input_ids=ids, cache=DynamicCache(), logits_to_keep=keep).logits
            assert same(got, want), keep


def _ragged(runner: ModelRunner, rows: int) -> RaggedKVBuffer:
    g = runner.geometry
    return RaggedKVBuffer(num_layers=g.num_layers, num_kv_heads=g.num_kv_heads, head_dim=g.head_dim, max_rows=rows,
                          max_len=128, dtype=g.dtype)


def test_batched_prefill_and_ragged_decode_match(pair) -> None:
    """The continuous batcher's paths: prompts of different lengths on different prefixes, then masked decode steps."""
    lean, plain = pair
    prompts = [_ids(n, seed=n) for n in (20, 45, 9)]
    starts = [0, 16, 3]
    buffers = []
    for runner in (lean, plain):
        kv = _ragged(runner, 3)
        for row, (prompt, start) in enumerate(zip(prompts, starts)):
            kv.add_row()
            if start:
                runner.prefill(prompt[:start], kv.row_cache(row, 0))
        logits = prefill_rows(runner.forward, kv, 0, prompts, starts)
        buffers.append((logits, greedy_steps(runner.forward, kv, logits, 4), kv))
    (logits_a, steps_a, kv_a), (logits_b, steps_b, kv_b) = buffers
    assert same(logits_a, logits_b)
    assert all(same(a, b) for a, b in zip(steps_a, steps_b))
    torch.testing.assert_close(kv_a.buffer, kv_b.buffer, rtol=1e-5, atol=1e-5)


def test_transformers_forward_still_runs_on_the_fused_weights() -> None:
    """Fusing replaces q/k/v and gate/up by slices of one projection: the model's own forward gives what it gave."""
    original = build_demo_model(TINY_SPEC)
    fused_model = build_demo_model(TINY_SPEC)
    fused = fuse_projections(fused_model, pack=False)
    assert isinstance(fused_model.model.layers[0].self_attn.k_proj, SliceOfFused)
    ids = torch.tensor([_ids(25, seed=2)])
    with torch.inference_mode():
        want = original(input_ids=ids).logits
        assert same(fused_model(input_ids=ids).logits, want)
        assert same(LeanLlama(fused_model, fused)(input_ids=ids).logits, want)


def test_bfloat16_follows_transformers_rounding() -> None:
    lean = ModelRunner.load(None, demo_spec=TINY_SPEC, dtype="bfloat16", packed_weights=False)
    plain = ModelRunner.load(None, demo_spec=TINY_SPEC, dtype="bfloat16", packed_weights=False, lean=False)
    ids = _ids(30, seed=3)
    got, want = lean.prefill(ids)[0], plain.prefill(ids)[0]
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16: one rounding step apart at most
    assert int(got.argmax()) == int(want.argmax())


def test_models_it_does_not_cover_keep_transformers_forward() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=64))
    assert "not a LlamaForCausalLM" in lean_unsupported(gpt2)
    eager = build_demo_model(TINY_SPEC)
    eager.set_attn_implementation("eager")
    assert "not SDPA" in lean_unsupported(eager)
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC, lean=False)
    assert runner.forward is runner.model


def test_a_mask_it_cannot_read_is_refused() -> None:
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    with pytest.raises(ValueError, match="4D boolean"):
        runner.forward(input_ids=torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 2, dtype=torch.long))
