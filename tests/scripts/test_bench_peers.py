"""`blatam bench peers`: prompts of exact token counts, the summary and ratios (a whole run against our
own llm app: tests/deployments/test_bench_peers_run.py, which has the Serve fixture)."""

from __future__ import annotations


import pytest
from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import PreTrainedTokenizerFast

from cache_actors.engine.demo_model import build_demo_tokenizer
from scripts.bench.peers import Samples, Workload, count_warnings, ratios, summarise
from scripts.bench.peers_client import Server
from scripts.bench.peers_prompts import PREFIX_MARGIN, WORDS, PromptMaker


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style BPE (byte fallback, "▁" for spaces, no pre-tokenizer) like the peer model's
    (notes/peers.md): its merges may cross word boundaries, which an exact cut has to survive."""
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    text = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    core.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   add_bos_token=True)


@pytest.mark.parametrize("tokenizer", [build_demo_tokenizer(), bpe_tokenizer()], ids=["bytes", "bpe"])
def test_prompts_have_the_token_counts_asked_for_and_are_new_each_run(tokenizer) -> None:
    maker = PromptMaker(tokenizer, seed=1)
    for tokens in (2049, 257, 64, 16):
        assert abs(maker.count(maker.fresh(tokens)) - tokens) <= 1 and maker.count(maker.fresh(tokens)) >= tokens
    pair = maker.cached_pair(cached=192, total=257)
    fill, timed = (tokenizer(t)["input_ids"] for t in (pair.fill, pair.timed))
    assert {len(fill), len(timed)} <= {257, 258} and fill != timed
    common = next(i for i, (a, b) in enumerate(zip(fill, timed, strict=False)) if a != b)
    assert common >= 192 + PREFIX_MARGIN - 1  # a merge across the parting may cost one token, never a block
    assert PromptMaker(tokenizer, seed=1).fresh(64) == PromptMaker(tokenizer, seed=1).fresh(64)
    assert PromptMaker(tokenizer, seed=1).fresh(64) != PromptMaker(tokenizer, seed=2).fresh(64)


def samples(scale: float) -> Samples:
    s = Samples.empty()
    s.values = {"ttft_uncached": [100 * scale, 300 * scale, 200 * scale], "ttft_cached": [10 * scale] * 3,
                "tok_s_1": [50 / scale] * 3, "tok_s_16": [400 / scale] * 3}
    s.prompt_tokens, s.cached_tokens = [2049, 2049, 2049], [1984, 1984, 1984]
    s.completion_tokens = {"tok_s_1": [64, 60], "tok_s_16": [64]}
    return s


def test_summary_takes_medians_and_ratios_are_ours_over_the_peer() -> None:
    ours = summarise(samples(2.0), Server("ours", "http://a/v1", "m"))
    peer = summarise(samples(1.0), Server("peer", "http://b/v1", "m", {"ignore_eos": True}))
    assert ours["ttft_uncached_ms"] == 400 and ours["tok_s_1"] == 25 and peer["ignore_eos"] and not ours["ignore_eos"]
    assert ours["completion_tokens_per_request"] == {"tok_s_1": 62, "tok_s_16": 64}
    assert ratios(ours, peer) == {"ttft_uncached": 2.0, "ttft_cached": 2.0, "tok_s_1": 0.5, "tok_s_16": 0.5}
    assert count_warnings("ours", ours, Workload()) == []
    other = {**ours, "prompt_tokens": 1500, "cached_tokens": 1920}
    assert len(count_warnings("peer", other, Workload())) == 2
