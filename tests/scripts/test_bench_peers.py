"""`blatam bench peers`: prompts of exact token counts, the summary and ratios (a whole run against our
own llm app: tests/deployments/test_bench_peers_run.py, which has the Serve fixture)."""

from __future__ import annotations

import logging

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


def test_prompts_longer_than_the_context_are_cut_without_a_warning(caplog, monkeypatch) -> None:
    """The uncut text is longer than the model's context on purpose; Transformers warned about it on every run."""
    # Transformers' loggers print through their own handler; propagated, caplog sees what they say.
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    tokenizer = bpe_tokenizer()
    tokenizer.model_max_length = 512  # the peer model's context is 4,096: 2,049 tokens of words run past it
    with caplog.at_level(logging.WARNING):
        text = PromptMaker(tokenizer, seed=3).fresh(500)
    assert len(tokenizer(text)["input_ids"]) in (500, 501)
    assert "longer than the specified maximum sequence length" not in caplog.text


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


async def test_a_server_behind_an_api_key_is_measured_with_it_and_refused_without(tmp_path) -> None:
    """Ours through the gateway's /v1 (what `blatam up` serves), the tiny model behind it: the key rides along."""
    import httpx

    from cache_actors.engine.demo_model import TINY_SPEC
    from cache_actors.engine.model_runner import ModelRunner
    from deployments.gateway.app import create_app
    from deployments.gateway.state import GatewayState
    from scripts.bench.peers_client import PeerError, complete, connect, ttft
    from tests.deployments.llm_test_support import TinyBackend, make_app
    from tests.deployments.test_gateway_app import SECRET, InProcessServices, load_settings, make_service

    runner = ModelRunner.load(None, demo_spec=TINY_SPEC)
    openai_app = make_app(TinyBackend(runner).generate_stream, runner)

    class Front:
        async def app(self):
            return openai_app

    settings = load_settings({"blatam_env": "test", "secret_key": SECRET, "database_url": f"sqlite:///{tmp_path / 'gw.db'}"})
    state = await GatewayState.open(settings, InProcessServices({"echo": make_service()}), openai_front=Front())
    await state.auth.create_user(username="bench", password="a long password", scopes="llm")
    key = (await state.auth.create_api_key(username="bench", name="bench")).secret
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, timeout=60) as http:
        with pytest.raises(PeerError, match="401"):
            await connect(http, "gateway", "http://gw/v1")
        server = await connect(http, "gateway", "http://gw/v1", key)
        assert server.model == runner.model_id and server.headers == {"Authorization": f"Bearer {key}"}
        first = await ttft(http, server, "Hello there, how are you today?")
        assert first.ms > 0 and first.prompt_tokens
        assert await complete(http, server, "Count to three:", 3) > 0
    await state.close()


def test_ours_runs_the_dtype_asked_for_and_otherwise_the_files() -> None:
    """serve_config.yaml says `auto` (bf16 on a CPU with AMX); measured against a float32 peer, ours must be float32."""
    from scripts.bench.peers_ours import llm_only
    from scripts.up import DEFAULT_CONFIG, load_config

    def llm_args(dtype: str | None) -> dict:
        config = llm_only(load_config(DEFAULT_CONFIG, host="127.0.0.1", port=8000), "/models/m", dtype)
        assert [app.name for app in config.applications] == ["llm"]
        return config.applications[0].args

    assert llm_args(None)["cache"]["dtype"] == "auto"
    assert llm_args("float32")["cache"]["dtype"] == "float32" and llm_args("float32")["model_path"] == "/models/m"
    assert llm_args("float32")["cache"]["enable_distributed"] is True  # the rest of the file's cache settings stay
