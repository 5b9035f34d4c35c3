"""Trace replay: parsing, exact counting on a hand-made trace, the Belady ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_actors.policies import make_policy
from cache_actors.policies.simulator import (
    TraceError,
    TraceRequest,
    load_trace,
    parse_trace_line,
    prepare_trace,
    simulate,
    simulate_belady,
    sweep,
    write_trace,
)

BT = 4  # tokens per block in the hand-made traces

# Hand-made trace, capacity 3 blocks of 4 tokens; the expected numbers are worked
# out by hand in the test docstrings below.
HAND = [
    TraceRequest(0.0, 7, 1, (1, 2)),  # blocks of 4 + 3 tokens
    TraceRequest(1000.0, 12, 1, (1, 3, 4)),
    TraceRequest(2000.0, 8, 1, (1, 2)),
    TraceRequest(3000.0, 10, 1, (1, 3, 4)),
    TraceRequest(4000.0, 2, 1, (5,)),
]


def test_lru_counts_on_hand_made_trace() -> None:
    """LRU, 3 blocks.

    r0 [1,2]: 2 misses, cache {1,2}. r1 [1,3,4]: hit 1 (4 tokens); 3 fills the
    cache; 4 evicts 2 (the only unlocked leaf). r2 [1,2]: hit 1; 2 evicts 4
    (3 has a child, 1 is locked). r3 [1,3,4]: hit 1,3 (8 tokens); 4 evicts 2.
    r4 [5]: miss, evicts 4. Hits 0+1+1+2+0 = 4 of 11 blocks; tokens saved
    0+4+4+8+0 = 16 of 39; 7 inserted, 4 evicted.
    """
    trace = prepare_trace(HAND, BT)
    res = simulate(trace, make_policy("lru"), 3)
    assert (res.blocks_hit, res.blocks_total) == (4, 11)
    assert (res.tokens_saved, res.tokens_total) == (16, 39)
    assert (res.inserted, res.evicted, res.refused) == (7, 4, 0)
    assert res.hit_rate == pytest.approx(4 / 11)


def test_belady_counts_on_hand_made_trace() -> None:
    """Belady with bypass, 3 blocks.

    r1: 3 fits; 4 (next use r3) is refused, 2 (next use r2) is kept. r2 [1,2]:
    two hits, 8 tokens. r3: hits 1,3 (8 tokens); 4 is never used again:
    refused. r4: 5 is never used again: refused. Tokens 0+4+8+8+0 = 20.
    """
    res = simulate_belady(prepare_trace(HAND, BT), 3)
    assert (res.blocks_hit, res.tokens_saved, res.refused) == (5, 20, 3)


def test_request_never_evicts_its_own_prefix() -> None:
    # capacity 2, a 3-block prompt: the third block always finds every cached block locked
    trace = prepare_trace([TraceRequest(0.0, 12, 1, (1, 2, 3)), TraceRequest(1.0, 12, 1, (1, 2, 3))], BT)
    res = simulate(trace, make_policy("lru"), 2)
    assert res.no_room == 2 and res.blocks_hit == 2 and res.tokens_saved == 8  # both requests


def test_block_ids_are_chained_by_prefix() -> None:
    # id 7 under two different parents is two different blocks
    trace = prepare_trace([TraceRequest(0, 8, 0, (1, 7)), TraceRequest(0, 8, 0, (2, 7))], BT)
    assert trace.unique_blocks == 4
    assert trace.keys[0][1] != trace.keys[1][1]


def test_capacity_is_a_fraction_or_a_count() -> None:
    trace = prepare_trace(HAND, BT)  # 5 unique blocks
    assert trace.capacity_blocks(0.4) == 2
    assert trace.capacity_blocks(0.01) == 1
    assert trace.capacity_blocks(3) == 3
    with pytest.raises(ValueError):
        trace.capacity_blocks(0)


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"timestamp": 0, "hash_ids": [1]}', "input_length"),
        ('{"timestamp": 0, "input_length": -3, "hash_ids": []}', "input_length"),
        ('{"timestamp": 0, "input_length": 5, "hash_ids": [1, "x"]}', "hash_ids"),
        ('{"timestamp": -1, "input_length": 5, "hash_ids": [1]}', "timestamp"),
        ('{"timestamp": 0, "input_length": true, "hash_ids": [1]}', "input_length"),
    ],
)
def test_bad_lines_are_refused_with_the_field_named(line: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace_line(line, where="t.jsonl:3")


def test_block_count_must_match_input_length() -> None:
    with pytest.raises(TraceError, match="block_tokens"):
        prepare_trace([TraceRequest(0, 1200, 0, (1, 2))], 512)  # needs 3 blocks


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert write_trace(path, HAND) == len(HAND)
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"timestamp": 0, "input_length": 7, "output_length": 1, "hash_ids": [1, 2]}
    assert load_trace(path) == HAND


def test_load_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 4, "hash_ids": [1]}\n{oops\n')
    with pytest.raises(TraceError, match="t.jsonl:2"):
        load_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TraceError, match="no requests"):
        load_trace(tmp_path / "empty.jsonl")


# --- the ceiling ---------------------------------------------------------------------------


@st.composite
def random_traces(draw: st.DrawFn) -> tuple[list[TraceRequest], int]:
    """Requests that extend or cut earlier prompts (full blocks), and a capacity."""
    prompts: list[tuple[int, ...]] = []
    next_id = 0
    requests = []
    for i in range(draw(st.integers(2, 25))):
        base: tuple[int, ...] = ()
        if prompts and draw(st.booleans()):
            base = draw(st.sampled_from(prompts))
            base = base[: draw(st.integers(1, len(base)))]
        extra = draw(st.integers(0 if base else 1, 4))
        ids = base + tuple(range(next_id, next_id + extra))
        next_id += extra
        prompts.append(ids)
        requests.append(TraceRequest(1000.0 * i, BT * len(ids), 1, ids))
    return requests, draw(st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(case=random_traces())
def test_belady_is_a_ceiling_for_every_policy(case: tuple[list[TraceRequest], int]) -> None:
    requests, capacity = case
    trace = prepare_trace(requests, BT)
    ceiling = simulate_belady(trace, capacity).tokens_saved
    for name in ("lru", "lfu", "adaptive"):
        assert simulate(trace, make_policy(name), capacity).tokens_saved <= ceiling


def test_sweep_covers_every_policy_and_capacity() -> None:
    trace = prepare_trace(HAND, BT)
    cells = sweep(trace, [0.4, 3], ["lru", "belady"])
    assert [(c.result.policy, c.result.capacity_blocks) for c in cells] == [
        ("lru", 2), ("belady", 2), ("lru", 3), ("belady", 3)
    ]
    assert cells[2].capacity_fraction == pytest.approx(3 / 5)
    assert cells[2].as_dict()["tokens_saved"] == 16
    with pytest.raises(ValueError, match="supported"):
        sweep(trace, [1], ["nope"])


# --- the design test: adaptive on generated workloads ----------------------------------------


@pytest.fixture(scope="module")
def small_mixed() -> object:
    from scripts.bench.traces import generate

    return prepare_trace(generate("mixed", 1500, seed=3))


@pytest.mark.parametrize("capacity", [0.01, 0.1])
def test_adaptive_is_at_least_as_good_as_lru_and_lfu(small_mixed, capacity: float) -> None:
    blocks = small_mixed.capacity_blocks(capacity)
    saved = {name: simulate(small_mixed, make_policy(name), blocks).tokens_saved for name in ("lru", "lfu", "adaptive")}
    assert saved["adaptive"] >= max(saved["lru"], saved["lfu"])
    assert saved["adaptive"] <= simulate_belady(small_mixed, blocks).tokens_saved
