"""The grouped-query SDPA gives Transformers' ``sdpa`` results, with and without a cached prefix."""

from __future__ import annotations

import copy

import torch

from cache_actors.engine.demo_model import TINY_SPEC, build_demo_model
from cache_actors.engine.gqa_attention import GQA_SDPA, use_gqa_sdpa
from cache_actors.engine.model_runner import ModelRunner
from transformers import DynamicCache


def test_prefill_on_a_prefix_matches_transformers_sdpa() -> None:
    stock = build_demo_model(TINY_SPEC, torch.float32).eval()
    assert TINY_SPEC.num_attention_heads > TINY_SPEC.num_key_value_heads  # grouped heads: the case it changes
    grouped = copy.deepcopy(stock)
    assert use_gqa_sdpa(grouped) and grouped.config._attn_implementation == GQA_SDPA
    ids = torch.randint(3, TINY_SPEC.vocab_size, (1, 90), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        for model in (stock, grouped):
            cache = DynamicCache()
            model(input_ids=ids[:, :60], cache=cache, use_cache=True)  # the prefix: no mask, square causal
            model.last = model(input_ids=ids[:, 60:], cache=cache, use_cache=True).logits  # on a prefix: masked
        full_stock, full_grouped = stock(input_ids=ids).logits, grouped(input_ids=ids).logits
    torch.testing.assert_close(grouped.last, stock.last, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_grouped, full_stock, rtol=1e-5, atol=1e-5)


def test_the_runner_uses_it_and_other_implementations_are_left_alone() -> None:
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    assert runner.model.config._attn_implementation == GQA_SDPA
    eager = build_demo_model(TINY_SPEC, torch.float32)
    eager.set_attn_implementation("eager")
    assert not use_gqa_sdpa(eager) and eager.config._attn_implementation == "eager"
