"""The engine on the tiny demo model: reuse must never change what the model computes."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cache_actors.core.kv_layout import block_views, cache_from_buffer, new_prefix_buffer
from cache_actors.engine.requests import LLMRequest


def run(coro):
    return asyncio.run(coro)


def ids_of(engine, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(3, 259, (length - 1,), generator=generator).tolist()


def greedy(engine, ids: list[int], new: int = 12) -> dict:
    return engine.generate_ids(LLMRequest(prompt_token_ids=ids, sampling={"max_new_tokens": new}), ids)


def prefix_cache(engine, hit, tokens: int):
    """A model cache holding ``hit``'s blocks, with room for ``tokens``."""
    g = engine.runner.geometry
    capacity = -(-tokens // 16) * 16
    buffer = new_prefix_buffer(g.num_layers, g.num_kv_heads, capacity, g.head_dim, g.dtype, engine.runner.device)
    engine.cache.read_blocks(hit, block_views(buffer, 16)[: hit.num_blocks])
    return cache_from_buffer(buffer, hit.num_blocks * 16)


# prompt lengths around block boundaries (block 16): exact multiples, +1, and partial last blocks
@pytest.mark.parametrize("shared,total", [(16, 40), (32, 33), (48, 64), (47, 70), (64, 65), (80, 97)])
def test_logits_and_greedy_tokens_equal_with_and_without_reuse(make_engine, shared, total):
    engine = make_engine()
    base = ids_of(engine, total, seed=shared)
    first = base[:shared] + ids_of(engine, total - shared + 1, seed=999)[1:]
    greedy(engine, first)  # fills the cache with the shared prefix
    hashes = engine.block_hashes(base)
    reusable = min(len(hashes), (len(base) - 1) // 16)
    hit = engine.cache.match(hashes[:reusable])
    assert hit.num_blocks == min(shared // 16, reusable)
    try:
        prefix = prefix_cache(engine, hit, len(base))
        cached_logits, _ = engine.runner.prefill(base, prefix)
    finally:
        engine.cache.release(hit)
    plain_logits, _ = engine.runner.prefill(base)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=1e-4, atol=1e-5)

    reused = greedy(engine, base)
    fresh = greedy(make_engine(), base)
    assert fresh["cached_tokens"] == 0
    assert reused["cached_tokens"] >= (shared // 16) * 16 > 0 or shared < 16
    assert reused["token_ids"] == fresh["token_ids"]


def test_full_size_demo_model_reuse_equals_recompute():
    """Once on the real demo model (8 layers, 4 KV heads, 64-dim heads)."""
    from cache_actors import KVCacheConfig, UltraAdaptiveKVCacheEngine

    engine = UltraAdaptiveKVCacheEngine(KVCacheConfig(block_size=64, max_tokens=2048))
    text = "The quarterly report shows growth in every region. " * 6
    cold = run(engine.process_request({"text": text, "max_new_tokens": 8}))
    warm = run(engine.process_request({"text": text, "max_new_tokens": 8}))
    assert cold["cached_tokens"] == 0 and warm["cache_hit"] and warm["cached_tokens"] == 256
    assert warm["result"] == cold["result"] and warm["token_ids"] == cold["token_ids"]


def test_process_request_fields_and_stats(make_engine):
    engine = make_engine()
    text = "Shared system prompt for every customer. " * 4
    first = run(engine.process_request({"text": text + "Question one?", "max_new_tokens": 5}))
    second = run(engine.process_request({"text": text + "Question two?", "max_new_tokens": 5, "session_id": "s1"}))
    for key in ("result", "cache_hit", "cached_tokens", "prompt_tokens", "latency_ms"):
        assert key in first
    assert isinstance(first["result"], str) and first["completion_tokens"] <= 5
    assert not first["cache_hit"] and second["cache_hit"] and second["session_id"] == "s1"
    assert second["cached_tokens"] % 16 == 0 and second["cached_tokens"] <= len(text.encode()) + 1
    stats = engine.get_stats()
    assert stats["total_requests"] == 2
    assert stats["token_hit_rate"] == pytest.approx(second["cached_tokens"] / (first["prompt_tokens"] + second["prompt_tokens"]))
    assert stats["latency_ms_p50"] > 0 and stats["latency_ms_p99"] >= stats["latency_ms_p95"] >= stats["latency_ms_p50"]
    assert stats["blocks"] > 0 and stats["bytes_used"] == stats["blocks"] * engine.cache.pool.block_bytes
    assert stats["evictions"] == 0


def test_sampling_is_reproducible_with_a_seed(make_engine):
    engine = make_engine()
    request = {"text": "Once upon a time", "max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 42}
    a = run(engine.process_request(request))
    b = run(engine.process_request(request))
    assert a["token_ids"] == b["token_ids"]


def test_stop_strings_cut_the_result(make_engine):
    engine = make_engine()
    free = run(engine.process_request({"text": "abc", "max_new_tokens": 20}))
    if len(free["result"]) < 3:
        pytest.skip("demo output too short to pick a stop string")
    stop = free["result"][2:4]
    cut = run(engine.process_request({"text": "abc", "max_new_tokens": 20, "stop": [stop]}))
    assert cut["finish_reason"] == "stop" and stop not in cut["result"]
    assert free["result"].startswith(cut["result"])


def test_tenants_do_not_share_blocks(make_engine):
    engine = make_engine()
    text = "Confidential prompt of tenant A. " * 3
    run(engine.process_request({"text": text, "max_new_tokens": 2, "tenant_id": "a"}))
    other = run(engine.process_request({"text": text, "max_new_tokens": 2, "tenant_id": "b"}))
    same = run(engine.process_request({"text": text, "max_new_tokens": 2, "tenant_id": "a"}))
    assert other["cached_tokens"] == 0 and same["cached_tokens"] > 0
    shared = make_engine(tenant_isolation=False)
    run(shared.process_request({"text": text, "max_new_tokens": 2, "tenant_id": "a"}))
    assert run(shared.process_request({"text": text, "max_new_tokens": 2, "tenant_id": "b"}))["cached_tokens"] > 0


@pytest.mark.parametrize(
    "request_,message",
    [
        ({}, "missing 'text'"),
        ({"text": 5}, "must be a string"),
        ({"text": ""}, "must not be empty"),
        ({"text": "x", "max_new_tokens": -3}, ">= 1"),
        ({"text": "x", "max_new_tokens": "many"}, "integer"),
        ({"text": "x", "max_new_tokens": True}, "integer"),
        ({"text": "x", "temperature": -0.5}, "temperature"),
        ({"text": "x", "top_p": 0}, "top_p"),
        ({"text": "x", "stop": [1, 2]}, "stop"),
        ({"text": "x", "session_id": 12}, "session_id"),
        ({"text": "x" * 1100}, "context"),
        ({"text": "x" * 1000, "max_new_tokens": 100}, "context"),
        ("just text", "must be a dict"),
    ],
)
def test_bad_requests_raise_clear_value_errors(make_engine, request_, message):
    engine = make_engine()
    with pytest.raises(ValueError, match=message):
        run(engine.process_request(request_))
    assert engine.get_stats()["total_requests"] == 0


def test_process_batch_reuses_and_validates_everything_first(make_engine):
    engine = make_engine()
    prefix = "Company policy: be concise. " * 3
    results = run(engine.process_batch([{"text": prefix + f"Task {i}", "max_new_tokens": 3} for i in range(3)]))
    assert [r["cache_hit"] for r in results] == [False, True, True]
    with pytest.raises(ValueError, match="request 1"):
        run(engine.process_batch([{"text": "ok"}, {"text": ""}]))
    assert engine.get_stats()["total_requests"] == 3


def test_eviction_under_a_small_pool_keeps_results_correct(make_engine):
    engine = make_engine(max_tokens=64)  # four blocks of 16
    texts = [f"Document number {i}: " + "lorem ipsum " * 8 for i in range(4)]
    first = [run(engine.process_request({"text": t, "max_new_tokens": 4})) for t in texts]
    again = [run(engine.process_request({"text": t, "max_new_tokens": 4})) for t in texts]
    assert [a["result"] for a in again] == [f["result"] for f in first]
    stats = engine.get_stats()
    assert stats["evictions"] > 0 and stats["blocks"] <= 4


def test_validate_configuration(make_engine, tmp_path):
    good = make_engine().validate_configuration()
    assert good["valid"] and good["issues"] == []
    tiny = make_engine(max_tokens=8).validate_configuration()  # below one block
    assert not tiny["valid"] and any("no block" in issue for issue in tiny["issues"])
    small = make_engine(max_tokens=256).validate_configuration()
    assert small["valid"] and any("less than one full context" in w for w in small["warnings"])


def test_clear_cache(make_engine):
    engine = make_engine()
    run(engine.process_request({"text": "hello " * 10, "max_new_tokens": 2}))
    assert engine.get_stats()["blocks"] > 0
    engine.clear_cache()
    assert engine.get_stats()["blocks"] == 0
    assert run(engine.process_request({"text": "hello " * 10, "max_new_tokens": 2}))["cached_tokens"] == 0


@pytest.mark.parametrize("strategy", ["lfu", "compressed", "quantized"])
def test_other_strategies_serve_hits(make_engine, strategy):
    engine = make_engine(cache_strategy=strategy)
    text = "Strategy check with a long enough prompt to fill blocks. " * 2
    run(engine.process_request({"text": text, "max_new_tokens": 3}))
    warm = run(engine.process_request({"text": text, "max_new_tokens": 3}))
    assert warm["cached_tokens"] > 0
