"""Eviction policies against the prefix index: order, safety, admission, adaptation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_actors.policies.adaptive import AdaptivePolicy
from cache_actors.core.block_index import BlockIndex, BlockNode
from cache_actors.policies.lrfu import CrfTable, LrfuPolicy
from cache_actors.policies import POLICY_REGISTRY, LFUPolicy, LRUPolicy, PriorityPolicy, make_policy
from cache_actors.policies.replay import replay_request

ALL_POLICIES = sorted(POLICY_REGISTRY) + ["lrfu"]


def new_policy(name: str):
    if name == "lrfu":
        return LrfuPolicy(CrfTable(half_life=8.0, max_keys=256))
    return make_policy(name)


def pop_all(index: BlockIndex, now: float = 100.0) -> list:
    keys = []
    while (node := index.pop_victim(now)) is not None:
        keys.append(node.key)
    return keys


def roots(index: BlockIndex, keys: list, start: float = 1.0) -> dict:
    return {k: index.insert(k, None, start + i) for i, k in enumerate(keys)}


# --- hand-made orders ------------------------------------------------------------------


def test_lru_evicts_least_recently_used_first() -> None:
    index = BlockIndex(LRUPolicy())
    nodes = roots(index, ["a", "b", "c"])  # inserted at t=1, 2, 3
    index.touch([nodes["a"]], 4.0)
    assert pop_all(index) == ["b", "c", "a"]


def test_lfu_evicts_least_hit_first_and_breaks_ties_by_recency() -> None:
    index = BlockIndex(LFUPolicy())
    nodes = roots(index, ["a", "b", "c", "d"])
    index.touch([nodes["a"]], 5.0)
    index.touch([nodes["a"]], 6.0)
    index.touch([nodes["c"]], 7.0)
    # b and d have no hit: b is older; then c (1 hit), then a (2 hits)
    assert pop_all(index) == ["b", "d", "c", "a"]


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_leaves_go_before_their_ancestors(name: str) -> None:
    index = BlockIndex(new_policy(name))
    root = index.insert("r", None, 1.0)
    mid = index.insert("m", root, 1.0)
    index.insert("leaf", mid, 1.0)
    index.touch([root], 50.0)  # the root is the most recent and most used: still last
    assert pop_all(index) == ["leaf", "m", "r"]


@pytest.mark.parametrize("name", ALL_POLICIES)
def test_locked_blocks_are_never_offered(name: str) -> None:
    index = BlockIndex(new_policy(name))
    nodes = roots(index, ["a", "b", "c"])
    index.lock([nodes["a"], nodes["c"]])
    assert pop_all(index) == ["b"]
    index.unlock([nodes["c"]], 10.0)
    assert pop_all(index) == ["c"]
    assert len(index) == 1 and "a" in index


def test_priority_heap_stays_bounded_under_repeated_access() -> None:
    policy = LRUPolicy()
    index = BlockIndex(policy)
    nodes = roots(index, ["a", "b"])
    for t in range(10_000):
        index.touch([nodes["a"]], 10.0 + t)
    assert len(policy._heap) <= 2 * 2 + 64 + 1
    assert pop_all(index) == ["b", "a"]


# --- randomized safety: the policy only ever offers evictable blocks ---------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.lists(st.integers(0, 5), min_size=1, max_size=6)),
        st.tuples(st.just("lock"), st.integers(0, 50)),
        st.tuples(st.just("unlock"), st.integers(0, 50)),
        st.tuples(st.just("pop"), st.integers(0, 3)),
    ),
    max_size=60,
)


def check_invariants(index: BlockIndex) -> None:
    for node in index:
        children = sum(1 for other in index if other.parent is node)
        assert node.num_children == children
        assert node.ref_cnt >= 0
        assert node.parent is None or node.parent.key in index


@pytest.mark.parametrize("name", ALL_POLICIES)
@settings(max_examples=40, deadline=None)
@given(ops=OPS, capacity=st.integers(1, 8))
def test_random_operations_keep_index_invariants(name: str, ops: list, capacity: int) -> None:
    policy = new_policy(name)
    index = BlockIndex(policy)
    policy.set_capacity(capacity)
    held: list[BlockNode] = []
    now = 0.0
    for op, arg in ops:
        now += 1.0
        if op == "request":
            # chained keys: a request is a path of small ids from the root
            keys = [tuple(arg[: i + 1]) for i in range(len(arg))]
            replay_request(index, keys, now, capacity, [4] * len(keys))
            assert len(index) <= capacity
        elif op == "lock" and len(index):
            node = list(index)[arg % len(index)]
            index.lock([node])
            held.append(node)
        elif op == "unlock" and held:
            node = held.pop(arg % len(held))
            if node.key in index:
                index.unlock([node], now)
        elif op == "pop":
            for _ in range(arg):
                evictable = [n for n in index if n.evictable]
                victim = index.pop_victim(now)  # asserts the victim was an evictable leaf
                if victim is None:
                    assert not evictable, "a policy must offer a victim while one is evictable"
                    break
                assert victim in evictable and victim.key not in index
        check_invariants(index)


# --- LRFU expert -------------------------------------------------------------------------


def test_crf_ranks_frequent_over_single_and_forgets_with_time() -> None:
    table = CrfTable(half_life=10.0, max_keys=100)
    table.observe(["hot"])
    table.observe(["hot", "cold"])
    assert table.score("hot") > table.score("cold") > table.score("never")
    table.observe(["filler"] * 200)  # the clock moves 20 half-lives
    table.observe(["new"])
    assert table.score("new") > table.score("hot")  # old frequency decayed away


def test_crf_table_is_bounded() -> None:
    table = CrfTable(half_life=1000.0, max_keys=64)
    for i in range(1000):
        table.observe([i])
    assert len(table) <= 64
    assert table.score(999) > table.score(0)  # the recent ones are kept


def test_lrfu_admission_refuses_one_off_blocks_when_full() -> None:
    table = CrfTable(half_life=1e6, max_keys=1000)  # frequency-like
    policy = LrfuPolicy(table)
    index = BlockIndex(policy)
    policy.set_capacity(2)
    for _ in range(3):
        replay_request(index, ["a"], 0.0, 2, [4])
        replay_request(index, ["b"], 0.0, 2, [4])
    out = replay_request(index, ["once"], 0.0, 2, [4])
    assert out.refused and out.inserted == 0
    assert "a" in index and "b" in index
    # a block seen often enough gets in
    for _ in range(5):
        replay_request(index, ["c"], 0.0, 2, [4])
    assert "c" in index


def test_lrfu_admits_anything_while_there_is_room() -> None:
    policy = LrfuPolicy(CrfTable(half_life=1e6, max_keys=100))
    policy.set_capacity(10)
    index = BlockIndex(policy)
    assert replay_request(index, ["x", "y"], 0.0, 10, [4, 4]).inserted == 2


def test_lrfu_prefers_evicting_partial_blocks() -> None:
    policy = LrfuPolicy(CrfTable(half_life=100.0, max_keys=100))
    index = BlockIndex(policy)
    replay_request(index, ["full"], 0.0, 10, [512])
    replay_request(index, ["part"], 0.0, 10, [100])  # more recent, but saves fewer tokens
    assert pop_all(index) == ["part", "full"]


# --- adaptive ----------------------------------------------------------------------------


def test_registry_default_is_the_adaptive_policy() -> None:
    assert isinstance(make_policy("adaptive"), AdaptivePolicy)
    with pytest.raises(ValueError, match="supported"):
        make_policy("nope")


def test_adaptive_without_request_stream_behaves_like_lru() -> None:
    index = BlockIndex(AdaptivePolicy())
    nodes = roots(index, ["a", "b", "c"])
    index.touch([nodes["a"]], 4.0)
    assert pop_all(index) == ["b", "c", "a"]  # capacity inferred at the first eviction


def _hot_and_scan(rng: random.Random, n: int) -> list[list[tuple]]:
    """Requests: 8 hot two-block prefixes (80%) and one-off four-block scans (20%)."""
    requests = []
    for i in range(n):
        if rng.random() < 0.8:
            hot = rng.randrange(8)
            requests.append([("hot", hot, 0), ("hot", hot, 1)])
        else:
            requests.append([("scan", i, j) for j in range(4)])
    return requests


def test_adaptive_learns_frequency_on_a_small_cache_and_beats_lru() -> None:
    capacity = 16
    results = {}
    for name in ("lru", "adaptive"):
        policy = make_policy(name)
        policy.set_capacity(capacity)
        index = BlockIndex(policy)
        hits = sum(
            replay_request(index, keys, float(t), capacity, [4] * len(keys)).hits
            for t, keys in enumerate(_hot_and_scan(random.Random(7), 3000))
        )
        results[name] = (hits, policy)
    adaptive: AdaptivePolicy = results["adaptive"][1]
    assert adaptive.half_life is not None and adaptive.half_life > AdaptivePolicy.HALF_LIVES[0]
    assert results["adaptive"][0] > results["lru"][0]
    assert set(adaptive.shadow_savings()) == set(AdaptivePolicy.HALF_LIVES)


def test_adaptive_follows_its_leader_exactly_when_it_never_switches() -> None:
    # a pure recency workload (each block reused once, soon): the default expert stays
    capacity = 8
    adaptive = AdaptivePolicy()
    adaptive.set_capacity(capacity)
    expert = LrfuPolicy(CrfTable(AdaptivePolicy.HALF_LIVES[0] * capacity, 8 * capacity + 1024))
    expert.set_capacity(capacity)
    real, alone = BlockIndex(adaptive), BlockIndex(expert)
    for t in range(400):
        keys = [("k", t // 2, 0), ("k", t // 2, 1)]
        a = replay_request(real, keys, float(t), capacity, [4, 4])
        b = replay_request(alone, keys, float(t), capacity, [4, 4])
        assert a.hits == b.hits
    assert adaptive.half_life == AdaptivePolicy.HALF_LIVES[0]
    assert {n.key for n in real} == {n.key for n in alone}


def test_adaptive_reset_forgets_everything() -> None:
    policy = AdaptivePolicy()
    policy.set_capacity(4)
    index = BlockIndex(policy)
    for t in range(50):
        replay_request(index, [("x", t % 7)], float(t), 4, [4])
    index.clear()
    assert len(index) == 0 and all(v == 0.0 for v in policy.shadow_savings().values())


def test_priority_policies_share_the_heap_base() -> None:
    for cls in (LRUPolicy, LFUPolicy, LrfuPolicy, AdaptivePolicy):
        assert issubclass(cls, PriorityPolicy)
