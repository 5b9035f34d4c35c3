"""Chunked prefill: a prompt over the iteration's prefill budget is computed in chunks while the
batch keeps decoding, and its output is the same as prefilled at once."""

from __future__ import annotations

import asyncio

from cache_actors.engine.batching import SequenceRequest
from cache_actors.engine.sampling import SamplingParams
from tests.cache_actors.test_continuous_batching import _reference, _request

LONG = "The board asked for a detailed review of every regional office and its budget. " * 5


def test_long_prompt_in_chunks_equals_prefill_at_once(make_engine, batcher):
    expected = _reference(make_engine(cache_strategy="lru", max_tokens=16), LONG)
    b = batcher(max_prefill_tokens=48)
    assert len(b.runner.encode(LONG)) > 4 * 48  # several chunks
    got = asyncio.run(b.generate(_request(b.runner, LONG)))
    assert got["token_ids"] == expected["token_ids"] and got["text"] == expected["result"]
    again = asyncio.run(b.generate(_request(b.runner, LONG)))  # its prompt blocks were stored at the end
    assert again["cached_tokens"] > 0 and again["token_ids"] == expected["token_ids"]


def test_batch_keeps_decoding_while_a_long_prompt_is_chunked(make_engine, batcher):
    reference = make_engine(cache_strategy="lru", max_tokens=16)
    short = "Status update for the team:"
    want_short = _reference(reference, short, max_new_tokens=48)
    want_long = _reference(reference, LONG)
    b = batcher(max_prefill_tokens=32, idle_prefill_tokens=4096)  # the idle budget must not apply: one decodes

    async def run():
        decoding = asyncio.ensure_future(b.generate(_request(b.runner, short, max_new_tokens=48)))
        while b.steps == 0:  # the short one is decoding before the long one arrives
            await asyncio.sleep(0.005)
        long = await b.generate(_request(b.runner, LONG))
        return await decoding, long

    got_short, got_long = asyncio.run(run())
    assert got_short["token_ids"] == want_short["token_ids"]
    assert got_long["token_ids"] == want_long["token_ids"]
    assert b.steps_during_chunked_prefill > 0  # decode steps ran between the long prompt's chunks


def test_a_long_prompt_with_nothing_decoding_is_prefilled_in_one_forward(make_engine, batcher):
    expected = _reference(make_engine(cache_strategy="lru", max_tokens=16), LONG)
    b = batcher(max_prefill_tokens=32, idle_prefill_tokens=512)
    assert len(b.runner.encode(LONG)) > 4 * 32
    forwards: list[int] = []
    prefill = b.runner.prefill
    b.runner.prefill = lambda ids, prefix=None: forwards.append(len(ids)) or prefill(ids, prefix)  # counts, runs the real one
    got = asyncio.run(b.generate(_request(b.runner, LONG)))
    assert got["token_ids"] == expected["token_ids"]
    assert forwards == [len(b.runner.encode(LONG))] and b.steps_during_chunked_prefill == 0


def test_cancelling_a_half_prefilled_prompt_frees_its_place(batcher):
    b = batcher(max_batch_size=1, max_prefill_tokens=16)

    async def run():
        stream = b.stream(_request(b.runner, LONG, max_new_tokens=4))
        task = asyncio.ensure_future(stream.__anext__())
        while b._partial is None and not task.done():  # it is being prefilled chunk by chunk
            await asyncio.sleep(0.001)
        assert not task.done()
        task.cancel()  # the client went away
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        follow = SequenceRequest(token_ids=b.runner.encode("Short one"), sampling=SamplingParams(max_new_tokens=3))
        return await asyncio.wait_for(b.generate(follow), timeout=60)

    assert asyncio.run(run())["completion_tokens"] == 3
    assert b._partial is None and b.load()["running"] == 0
