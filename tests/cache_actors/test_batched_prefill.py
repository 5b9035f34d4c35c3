"""Prompts admitted together are prefilled in one forward, with what each would get alone."""

from __future__ import annotations

import asyncio
import threading

import torch

from cache_actors.engine.batching.batched_prefill import prefill_rows
from cache_actors.engine.batching.ragged_kv import RaggedKVBuffer
from tests.cache_actors.test_continuous_batching import PROMPTS, _reference, _request


def _buffer(runner, rows: int) -> RaggedKVBuffer:
    g = runner.geometry
    return RaggedKVBuffer(num_layers=g.num_layers, num_kv_heads=g.num_kv_heads, head_dim=g.head_dim, max_rows=rows,
                          max_len=256, dtype=g.dtype)


def test_rows_with_different_prefixes_get_the_logits_and_kv_of_one_at_a_time(tiny_runner) -> None:
    prompts = [tiny_runner.encode(PROMPTS[i]) for i in (0, 2, 3, 4)]
    starts = [0, 16, 3, len(prompts[3]) - 1]  # nothing cached, a block, an odd prefix, all but one token
    alone, together = _buffer(tiny_runner, 4), _buffer(tiny_runner, 4)
    want = []
    for row, (prompt, start) in enumerate(zip(prompts, starts)):
        for kv in (alone, together):
            kv.add_row()
            if start:  # the cached prefix, as a cache read would have put it in the row
                tiny_runner.prefill(prompt[:start], kv.row_cache(row, 0))
        logits, _ = tiny_runner.prefill(prompt, alone.row_cache(row, start))
        want.append(logits)
    got = prefill_rows(tiny_runner.model, together, 0, prompts, starts)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-4)
    assert got.argmax(-1).tolist() == [int(w.argmax()) for w in want]
    assert together.lengths == [len(p) for p in prompts]
    for row, prompt in enumerate(prompts):  # each row holds exactly its own prompt's KV
        n = len(prompt)
        torch.testing.assert_close(together.row_view(row)[:, :, :, :n], alone.row_view(row)[:, :, :, :n],
                                   rtol=1e-4, atol=1e-4)


def _queued_together(b, requests) -> list[dict]:
    """Run ``requests`` on ``b`` with all of them queued before its next iteration (so admitted together).

    A request that failed gives its exception in its place.
    """
    hold, holding = threading.Event(), threading.Event()

    def pause() -> None:  # runs on the batcher's thread: every request queues up meanwhile
        holding.set()
        hold.wait(30)

    async def run():
        loop = asyncio.get_running_loop()
        paused = loop.run_in_executor(None, b.compute.call, pause)
        await loop.run_in_executor(None, holding.wait, 30)
        tasks = [asyncio.ensure_future(b.generate(request)) for request in requests]
        while b.load()["waiting"] < len(requests):
            await asyncio.sleep(0.005)
        hold.set()
        await paused
        return await asyncio.gather(*tasks, return_exceptions=True)

    return asyncio.run(run())


def test_requests_queued_together_share_one_prefill_and_keep_their_output(make_engine, batcher) -> None:
    expected = [_reference(make_engine(cache_strategy="lru", max_tokens=16), p) for p in PROMPTS]
    b = batcher(max_batch_size=8, max_prefill_tokens=4096)
    results = _queued_together(b, [_request(b.runner, p) for p in PROMPTS])
    assert b.grouped_prefills == len(PROMPTS)
    for got, want in zip(results, expected):
        assert got["token_ids"] == want["token_ids"] and got["finish_reason"] == want["finish_reason"]


def test_one_finishing_at_its_first_token_does_not_disturb_the_others(make_engine, batcher) -> None:
    b = batcher(max_batch_size=8, max_prefill_tokens=4096)
    reference = make_engine(cache_strategy="lru", max_tokens=16)
    lengths = [1, 5, 1, 7, 3]
    expected = [_reference(reference, p, n) for p, n in zip(PROMPTS, lengths)]
    results = _queued_together(b, [_request(b.runner, p, max_new_tokens=n) for p, n in zip(PROMPTS, lengths)])
    assert b.grouped_prefills == len(PROMPTS) and b.load()["running"] == 0
    for got, want in zip(results, expected):
        assert got["token_ids"] == want["token_ids"]


def test_a_failed_group_prefill_fails_its_requests_and_frees_their_rows(batcher, monkeypatch) -> None:
    import cache_actors.engine.batching.admission as admission

    b = batcher(max_batch_size=8, max_prefill_tokens=4096)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(admission, "prefill_rows", broken)
    failed = _queued_together(b, [_request(b.runner, p) for p in PROMPTS[:3]])
    assert all(isinstance(f, RuntimeError) and "out of memory" in str(f) for f in failed)
    assert b.load()["running"] == 0 and b.kv.active == 0 and b.alive
    monkeypatch.undo()
    assert asyncio.run(b.generate(_request(b.runner, PROMPTS[0], max_new_tokens=3)))["completion_tokens"] == 3


def test_prompts_sharing_new_blocks_are_not_computed_twice_in_one_forward(batcher) -> None:
    b = batcher(max_batch_size=8, max_prefill_tokens=4096)
    shared = "Shared instructions for every branch of this conversation, long enough for blocks. " * 3
    prompts = [shared + "first", shared + "second", PROMPTS[0], shared + "third"]
    results = _queued_together(b, [_request(b.runner, p, max_new_tokens=4) for p in prompts])
    block = b.block_size
    full_shared = (len(b.runner.encode(shared)) // block) * block
    assert results[0]["cached_tokens"] == 0
    # The later ones came after the first's prompt was stored: they reused the shared blocks.
    assert results[1]["cached_tokens"] >= full_shared - block and results[3]["cached_tokens"] >= full_shared - block
    assert b.grouped_prefills >= 2  # the others still shared a forward


def test_a_step_writes_each_rows_tokens_at_its_own_columns_and_nowhere_else() -> None:
    """The flat-index write (`RaggedLayer.update`) equals the advanced-index assignment it replaced."""
    torch.manual_seed(0)
    kv = RaggedKVBuffer(num_layers=2, num_kv_heads=3, head_dim=4, max_rows=5, max_len=32, dtype=torch.float32)
    kv.buffer.normal_()
    for _ in range(4):
        kv.add_row()
    for row, length in enumerate((7, 0, 19, 3)):
        kv.set_length(row, length)
    expected = kv.buffer.clone()
    for starts, counts, first in (([7, 0, 19], [3, 5, 1], 0), (None, None, None)):  # an extend of rows 0-2, a decode step
        cache, positions, _ = kv.extend_inputs(first, starts, counts) if starts else kv.decode_inputs()
        rows, width = positions.shape
        first = first or 0
        for layer_index, layer in enumerate(cache.layers):
            keys, values = (torch.randn(rows, width, 3, 4).transpose(1, 2) for _ in range(2))  # strided, as the model's
            layer.update(keys, values)
            for side, states in ((0, keys), (1, values)):
                view = expected[layer_index, side, first : first + rows]
                view[torch.arange(rows)[:, None], :, positions] = states.transpose(1, 2)
        assert torch.equal(kv.buffer, expected)
