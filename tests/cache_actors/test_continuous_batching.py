"""Continuous batching on the tiny demo model: same greedy output as one request at a time."""

from __future__ import annotations

import asyncio

import pytest

from cache_actors.engine.batching import SequenceRequest
from cache_actors.engine.batching.detokenizer import IncrementalText
from cache_actors.engine.sampling import SamplingParams

PROMPTS = [
    "The quarterly report shows that revenue grew",
    "x",
    "Write a short memo to the sales team about the new pricing policy for enterprise customers.",
    "Ünïcödé prompt with multibyte characters: 日本語のテキスト",
    "System: you are a helpful assistant.\nUser: summarise the meeting notes below in three bullet points.",
]


def _request(runner, text: str, **sampling) -> SequenceRequest:
    return SequenceRequest(token_ids=runner.encode(text), sampling=SamplingParams(**{"max_new_tokens": 24, **sampling}))


def _reference(engine, text: str, max_new_tokens: int = 24) -> dict:
    """Greedy tokens recomputed by the runner alone, one token at a time (no batch, no cache)."""
    runner = engine.runner
    logits, kv = runner.prefill(runner.encode(text))
    tokens: list[int] = []
    finish = "length"
    while len(tokens) < max_new_tokens:
        token = int(logits.argmax())
        if token in runner.eos_token_ids:
            finish = "stop"
            break
        tokens.append(token)
        if len(tokens) < max_new_tokens:
            logits = runner.step(token, kv)
    return {"token_ids": tokens, "result": runner.decode(tokens), "finish_reason": finish}


def test_concurrent_greedy_equals_one_at_a_time(make_engine, batcher):
    reference_engine = make_engine(cache_strategy="lru", max_tokens=16)  # (almost) no reuse
    expected = [_reference(reference_engine, p) for p in PROMPTS]
    b = batcher(max_batch_size=4)  # 5 prompts > 4 rows: one joins when another leaves

    async def run():
        return await asyncio.gather(*(b.generate(_request(b.runner, p)) for p in PROMPTS))

    results = asyncio.run(run())
    for got, want in zip(results, expected):
        assert got["token_ids"] == want["token_ids"]
        assert got["text"] == want["result"]
        assert got["finish_reason"] == want["finish_reason"]
        assert got["completion_tokens"] == len(want["token_ids"])
    assert b.steps > 0 and b.step_rows / b.steps > 1.5  # they really shared steps


def test_repeated_prefix_hits_cache_and_keeps_output(batcher):
    b = batcher()
    prompt = "A long shared system prompt for every tenant request. " * 4
    first = asyncio.run(b.generate(_request(b.runner, prompt + "Question one?")))
    second = asyncio.run(b.generate(_request(b.runner, prompt + "Question one?")))
    assert first["cached_tokens"] == 0
    assert second["cached_tokens"] >= 16 * ((len(b.runner.encode(prompt)) - 1) // 16)
    assert second["token_ids"] == first["token_ids"]


def test_generated_blocks_are_cached_for_the_next_turn(batcher):
    b = batcher()
    prompt = "Turn one of a conversation that goes on. "
    first = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=64)))
    follow = b.runner.encode(prompt) + first["token_ids"] + b.runner.encode(" next")[1:]
    second = asyncio.run(b.generate(SequenceRequest(token_ids=follow, sampling=SamplingParams(max_new_tokens=4))))
    assert second["cached_tokens"] > len(b.runner.encode(prompt)) // 16 * 16


def test_cancelling_frees_the_row(batcher):
    b = batcher(max_batch_size=1)

    async def run():
        stream = b.stream(_request(b.runner, PROMPTS[0], max_new_tokens=400))
        await stream.__anext__()
        await stream.aclose()  # the client went away
        return await asyncio.wait_for(b.generate(_request(b.runner, PROMPTS[1], max_new_tokens=4)), timeout=30)

    result = asyncio.run(run())
    assert result["completion_tokens"] == 4
    assert b.load()["running"] == 0


def test_sampling_is_reproducible_with_a_seed_under_concurrency(batcher):
    b = batcher()

    async def run():
        reqs = [_request(b.runner, PROMPTS[0], temperature=1.0, top_p=0.9, seed=7) for _ in range(3)]
        return await asyncio.gather(*(b.generate(r) for r in reqs))

    results = asyncio.run(run())
    assert results[0]["token_ids"] == results[1]["token_ids"] == results[2]["token_ids"]


def test_refuses_requests_over_the_context(batcher):
    b = batcher(max_model_len=64)
    with pytest.raises(ValueError, match="context"):
        b.check(_request(b.runner, "y" * 80))
    with pytest.raises(ValueError, match="max_tokens"):
        b.check(_request(b.runner, "short", max_new_tokens=60))


def test_stop_string_cuts_the_text(batcher, make_engine):
    b = batcher()
    free = asyncio.run(b.generate(_request(b.runner, PROMPTS[2], max_new_tokens=40)))
    text = free["text"]
    assert len(text) > 6
    stop = text[3:6]
    cut = asyncio.run(b.generate(_request(b.runner, PROMPTS[2], max_new_tokens=40, stop=(stop,))))
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == text[: text.find(stop)]


def test_incremental_text_holds_back_stop_prefixes_and_partial_utf8():
    pieces = "héllo STOP".encode()
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    text = IncrementalText(decode, ("STOP",))
    out = ""
    for byte in pieces:
        out += text.push(byte)
        assert "\ufffd" not in out
        if text.stopped:
            break
    assert text.stopped and out == "héllo " and text.text == "héllo "
    plain = IncrementalText(decode, ("STOP",))
    out = "".join(plain.push(b) for b in "a STO".encode())
    assert out == "a " and plain.flush() == "STO"


def test_slow_consumer_gets_tokens_merged_not_lost(batcher):
    b = batcher()
    fast = asyncio.run(b.generate(_request(b.runner, PROMPTS[0], max_new_tokens=40)))

    async def slow() -> list[dict]:
        events = []
        async for event in b.stream(_request(b.runner, PROMPTS[0], max_new_tokens=40)):
            events.append(event)
            await asyncio.sleep(0.05)  # slower than a decode step of the tiny model
        return events

    events = asyncio.run(slow())
    deltas = [e for e in events if e["type"] == "delta"]
    assert events[-1]["type"] == "done" and events[-1]["completion_tokens"] == fast["completion_tokens"]
    assert len(deltas) < fast["completion_tokens"]
    assert [t for e in deltas for t in e["token_ids"]] == fast["token_ids"]
    assert "".join(e["text"] for e in deltas) == fast["text"]


def test_min_tokens_and_ignore_eos(batcher):
    """``min_tokens`` masks the ids that end a sequence until enough exist; ``ignore_eos`` never stops on EOS."""
    b = batcher()
    prompt = "The quarterly report shows that revenue grew"
    free = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=12)))
    first, third = free["token_ids"][0], free["token_ids"][2]
    stops_at_once = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=12, stop_token_ids=(first,))))
    assert stops_at_once["completion_tokens"] == 0 and stops_at_once["finish_reason"] == "stop"
    held = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=12, stop_token_ids=(first,), min_tokens=4)))
    assert held["completion_tokens"] >= 4 and first not in held["token_ids"][:4]
    b._stop_ids = frozenset({third})  # as if the model's EOS came third
    ended = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=12)))
    assert ended["token_ids"] == free["token_ids"][:2] and ended["finish_reason"] == "stop"
    ignored = asyncio.run(b.generate(_request(b.runner, prompt, max_new_tokens=12, ignore_eos=True)))
    assert ignored["token_ids"] == free["token_ids"] and ignored["finish_reason"] == "length"


def test_logprobs_of_generated_and_prompt_tokens(batcher):
    """Greedy tokens are the top-1 of their own logprobs; prompt logprobs match one forward over the prompt."""
    import torch

    b = batcher()
    runner = b.runner
    prompt = "Revenue grew by"
    ids = runner.encode(prompt)
    got = asyncio.run(b.generate(_request(runner, prompt, max_new_tokens=6, logprobs=3, prompt_logprobs=2)))
    assert got["token_ids"] == _reference(b.engine, prompt, 6)["token_ids"]  # asking for logprobs changes nothing
    events = []

    async def run():
        async for event in b.stream(_request(runner, prompt, max_new_tokens=6, logprobs=3, prompt_logprobs=2)):
            events.append(event)

    asyncio.run(run())
    entries = [e for event in events if event["type"] == "delta" for e in event.get("logprobs", [])]
    assert [e["token_id"] for e in entries] == got["token_ids"]
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token_id"] == entry["token_id"]
        assert entry["logprob"] == entry["top_logprobs"][0]["logprob"] <= 0
    prompt_event = next(event for event in events if "prompt_logprobs" in event)
    assert prompt_event is events[0] and prompt_event["prompt_text"] == runner.decode(ids)
    listed = prompt_event["prompt_logprobs"]
    assert listed[0]["logprob"] is None and listed[0]["top_logprobs"] is None
    assert [e["token_id"] for e in listed] == ids
    with torch.inference_mode():
        full = torch.log_softmax(runner.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    for position in range(1, len(ids)):
        assert abs(listed[position]["logprob"] - float(full[position - 1, ids[position]])) < 1e-4
        assert len(listed[position]["top_logprobs"]) == 2


def test_prompt_logprobs_of_a_prompt_longer_than_one_chunk(batcher):
    import torch

    from cache_actors.engine.logprobs import PROMPT_CHUNK_TOKENS

    b = batcher()
    runner = b.runner
    prompt = "Minutes of the planning meeting, item by item. " * 8
    ids = runner.encode(prompt)
    assert PROMPT_CHUNK_TOKENS < len(ids) < 500
    events = []

    async def run():
        async for event in b.stream(_request(runner, prompt, max_new_tokens=2, prompt_logprobs=0)):
            events.append(event)

    asyncio.run(run())
    listed = events[0]["prompt_logprobs"]
    with torch.inference_mode():
        full = torch.log_softmax(runner.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    got = torch.tensor([e["logprob"] for e in listed[1:]])
    want = full[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert torch.allclose(got, want, atol=1e-3)


def test_a_whole_answer_comes_as_one_delta_with_every_token(batcher):
    b = batcher()

    async def events(whole: bool) -> list[dict]:
        return [e async for e in b.stream(_request(b.runner, PROMPTS[0], max_new_tokens=12), whole=whole)]

    tokenwise, whole = asyncio.run(events(False)), asyncio.run(events(True))
    assert [e["type"] for e in whole] == ["delta", "done"]
    assert len([e for e in tokenwise if e["type"] == "delta"]) > 1
    assert whole[0]["token_ids"] == [t for e in tokenwise if e["type"] == "delta" for t in e["token_ids"]]
    assert whole[0]["text"] == "".join(e["text"] for e in tokenwise if e["type"] == "delta")
    assert whole[1]["completion_tokens"] == tokenwise[-1]["completion_tokens"] == 12


def test_the_idle_flush_waits_for_a_quiet_moment(batcher, make_engine):
    """A request that follows the last answer at once runs before the cache's writes in flight are finished."""
    import time

    from cache_actors.core.kv_cache import BaseKVCache

    flushes: list[float] = []

    class RecordingCache(BaseKVCache):
        def flush_writes(self) -> None:
            flushes.append(time.monotonic())

    b = batcher(make_engine(cache_cls=RecordingCache), idle_flush_delay_s=1.0)
    asyncio.run(b.generate(_request(b.runner, PROMPTS[0], max_new_tokens=2)))
    asyncio.run(b.generate(_request(b.runner, PROMPTS[2], max_new_tokens=2)))
    assert flushes == []  # the second came within the quiet moment: nothing ran in front of it
    deadline = time.monotonic() + 30
    while not flushes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(flushes) == 1  # then, once quiet, the writes were finished

    closing = batcher(make_engine(cache_cls=RecordingCache), idle_flush_delay_s=30.0)
    flushes.clear()
    asyncio.run(closing.generate(_request(closing.runner, PROMPTS[0], max_new_tokens=2)))
    closing.close()
    assert len(flushes) == 1  # closed within the quiet moment: the writes were finished on the way out

    eager = batcher(make_engine(cache_cls=RecordingCache), idle_flush_delay_s=0)
    flushes.clear()
    asyncio.run(eager.generate(_request(eager.runner, PROMPTS[0], max_new_tokens=2)))
    deadline = time.monotonic() + 30
    while not flushes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flushes
