"""The coordinator's index: sequence numbers, resync, purge, locate, route, hotness, snapshot (no Ray)."""

from __future__ import annotations

import pytest

from cache_actors.cluster.global_index import REDIS, GlobalIndex
from cache_actors.cluster.shard_store import DEMOTED, EVICTED, STORED, TIER_MISS, TOUCHED


def h(i: int) -> bytes:
    return i.to_bytes(32, "big")


def stored(*ids: int) -> list:
    return [(STORED, h(i), h(i - 1) if i > 1 else None) for i in ids]


def synced(index: GlobalIndex, name: str, node: str = "n1", epoch: str = "e1", dump=()) -> None:
    assert index.apply(name, node, epoch, 0, []).resync
    assert index.load_dump(name, epoch, 0, list(dump))


def test_unknown_shard_resyncs_then_applies_in_order():
    index = GlobalIndex()
    result = index.apply("a", "n1", "e1", 0, stored(1, 2))
    assert result.resync
    # the dump was taken after event 0: event 1 is replayed from the buffer
    assert index.load_dump("a", "e1", 1, [(h(1), None, 0)])
    assert index.where(h(1)) == ["a"] and index.where(h(2)) == ["a"]
    assert not index.apply("a", "n1", "e1", 2, [(EVICTED, h(2))]).resync
    assert index.where(h(2)) == []


def test_dump_restores_tier_locations():
    index = GlobalIndex()
    assert index.apply("a", "n1", "e1", 0, []).resync
    assert index.load_dump("a", "e1", 0, [(h(1), None, 0)], [(h(2), REDIS)])
    assert index.where(h(2)) == [REDIS]


def test_gap_asks_for_resync_and_duplicates_are_ignored():
    index = GlobalIndex()
    synced(index, "a")
    index.apply("a", "n1", "e1", 0, stored(1))
    assert not index.apply("a", "n1", "e1", 0, stored(1)).resync  # duplicate batch
    assert index.apply("a", "n1", "e1", 5, stored(2)).resync  # events 1..4 were lost
    assert index.counters["gaps"] == 1
    assert index.load_dump("a", "e1", 6, [(h(1), None, 0), (h(2), h(1), 0)])
    assert len(index) == 2


def test_new_epoch_drops_the_old_incarnation_and_purge_forgets_a_shard():
    index = GlobalIndex()
    synced(index, "a")
    index.apply("a", "n1", "e1", 0, stored(1, 2))
    assert index.apply("a", "n1", "e2", 0, []).resync  # restarted: its pool is empty
    assert len(index) == 0
    synced(index, "b")
    index.apply("b", "n1", "e1", 0, stored(1))
    assert index.purge("b") == 1 and len(index) == 0


def test_locate_prefers_cheap_sources_and_skips_the_requester():
    index = GlobalIndex()
    synced(index, "local", node="n1")
    synced(index, "peer", node="n1")
    synced(index, "far", node="n2")
    index.apply("local", "n1", "e1", 0, stored(1))
    index.apply("far", "n2", "e1", 0, stored(1, 2, 3))
    index.apply("peer", "n1", "e1", 0, stored(1, 2))
    index.apply("far", "n2", "e1", 3, [(DEMOTED, h(3), REDIS)])
    runs = index.locate([h(1), h(2), h(3), h(4)], requester="local", node_id="n1", block_bytes=1 << 20)
    # same-node peer for what it has, then the cheaper of another node and Redis
    assert runs[0] == ("peer", [h(1), h(2)])
    assert runs[1][1] == [h(3)] and runs[1][0] in ("far", REDIS)
    assert index.locate([h(9)], requester="local", node_id="n1", block_bytes=1) == []


def test_hot_blocks_are_pushed_to_the_shards_holding_them():
    index = GlobalIndex(hot_min_hits=2)
    synced(index, "a")
    index.apply("a", "n1", "e1", 0, stored(1))
    assert index.apply("a", "n1", "e1", 1, [(TOUCHED, h(1))]).hot == []
    assert index.apply("a", "n1", "e1", 2, [(TOUCHED, h(1))]).hot == [h(1)]


def test_successors_and_route():
    index = GlobalIndex()
    synced(index, "a")
    synced(index, "b")
    index.apply("a", "n1", "e1", 0, stored(1, 2, 3, 4))
    index.apply("b", "n1", "e1", 0, stored(1, 2))
    assert index.successors(h(1), 2) == [h(2), h(3)]
    assert index.route([h(1), h(2), h(3), h(5)]) == [("a", 3), ("b", 2)]


def test_tier_miss_clears_a_tier_location():
    index = GlobalIndex()
    synced(index, "a")
    index.apply("a", "n1", "e1", 0, stored(1) + [(DEMOTED, h(1), REDIS), (EVICTED, h(1))])
    assert index.where(h(1)) == [REDIS]
    index.apply("a", "n1", "e1", 3, [(TIER_MISS, h(1), REDIS)])
    assert index.where(h(1)) == []


def test_snapshot_round_trip_keeps_tiers_and_hits():
    index = GlobalIndex()
    synced(index, "a")
    index.apply("a", "n1", "e1", 0, stored(1, 2) + [(DEMOTED, h(2), REDIS), (TOUCHED, h(2))])
    fresh = GlobalIndex()
    assert fresh.restore(index.snapshot()) == 1
    assert fresh.where(h(2)) == [REDIS] and fresh.hits(h(2)) == 1
    with pytest.raises(ValueError):
        fresh.restore(b"not a snapshot")


def test_route_by_bisection_equals_a_linear_scan():
    import random

    rng = random.Random(7)
    index = GlobalIndex()
    names = [f"s{i}" for i in range(5)]
    for name in names:
        synced(index, name)
    chain = list(range(1, 41))
    held = {name: rng.randint(0, 40) for name in names}  # each shard holds a prefix of the chain
    for name, count in held.items():
        index.apply(name, "n1", "e1", 0, stored(*chain[:count]))
    for cut in (1, 7, 40):
        query = [h(i) for i in chain[:cut]]
        expected = sorted(((n, min(c, cut)) for n, c in held.items() if min(c, cut)), key=lambda item: -item[1])
        assert sorted(index.route(query), key=lambda item: (-item[1], item[0])) == sorted(expected, key=lambda item: (-item[1], item[0]))
    assert index.route([]) == []


def _random_index(rng, num_shards: int, chain_len: int, *, redis_interval: bool = False):
    """Shards holding random prefixes of one chain on two nodes, Redis holding random blocks of it
    (or, with ``redis_interval``, one random contiguous run of it: the tail a shard demoted)."""
    index = GlobalIndex()
    names = [f"s{i}" for i in range(num_shards)]
    for number, name in enumerate(names):
        synced(index, name, node=f"n{number % 2}")
    held = {name: rng.randint(0, chain_len) for name in names}
    for name, count in held.items():
        index.apply(name, "n", "e1", 0, stored(*range(1, count + 1)))
    if redis_interval:
        first = rng.randint(1, chain_len)
        redis = set(range(first, rng.randint(first, chain_len) + 1))
    else:
        redis = {i for i in range(1, chain_len + 1) if rng.random() < 0.3}
    index.apply(names[0], "n", "e1", held[names[0]], [(DEMOTED, h(i), REDIS) for i in sorted(redis)])
    return index, names, held, redis


def test_route_matches_a_linear_scan_for_one_to_many_shards():
    import random

    rng = random.Random(11)
    for trial in range(60):
        num_shards = rng.choice([1, 2, 3, 9])
        index, names, held, _ = _random_index(rng, num_shards, 24)
        cut = rng.randint(1, 30)
        query = [h(i) for i in range(1, cut + 1)]
        expected = {(name, min(count, cut)) for name, count in held.items() if min(count, cut)}
        got = index.route(query)
        assert set(got) == expected, (trial, held, cut)
        assert [blocks for _, blocks in got] == sorted((blocks for _, blocks in got), reverse=True)


def _locate_reference(index, hashes, requester, node_id, block_bytes):
    """The plain definition: per position, each source's run; the cheapest per block wins (tiers first on ties)."""
    def sources(block):
        places = index.where(block)
        return [p for p in places if p == REDIS or (p != requester and not index.shards[p].resyncing)]

    runs, position = [], 0
    while position < len(hashes) and sources(hashes[position]):
        best = None
        for source in sorted(sources(hashes[position]), key=lambda s: -1 if s == REDIS else index.shards[s].bit):
            length = 1
            while position + length < len(hashes) and source in sources(hashes[position + length]):
                length += 1
            kind = REDIS if source == REDIS else ("same_node" if index.shards[source].node_id == node_id else "other_node")
            per_block = index.costs.cost_s(kind, length, block_bytes) / length
            if best is None or per_block < best[0]:
                best = (per_block, source, length)
        runs.append((best[1], hashes[position : position + best[2]]))
        position += best[2]
    return runs


def test_locate_matches_its_definition_when_each_place_holds_one_run():
    import random

    rng = random.Random(5)
    for _ in range(80):
        index, names, _, _ = _random_index(rng, rng.choice([1, 3, 6]), 20, redis_interval=True)
        query = [h(i) for i in range(rng.randint(1, 5), rng.randint(6, 24))]
        requester = rng.choice(names + [None])
        for block_bytes in (1, 1 << 20):
            assert index.locate(query, requester=requester, node_id="n0", block_bytes=block_bytes) == \
                _locate_reference(index, query, requester, "n0", block_bytes)


def test_locate_advice_stays_sound_over_holes():
    """Scattered tier blocks: runs may span a hole (the fetcher stops there), but each run's
    source holds its first and last block and the runs follow the chain from its start."""
    import random

    rng = random.Random(9)
    for _ in range(80):
        index, names, _, _ = _random_index(rng, rng.choice([1, 3, 6]), 20)
        query = [h(i) for i in range(rng.randint(1, 5), rng.randint(6, 24))]
        requester = rng.choice(names + [None])
        runs = index.locate(query, requester=requester, node_id="n0", block_bytes=1 << 20)
        assert [block for _, run in runs for block in run] == query[: sum(len(run) for _, run in runs)]
        for source, run in runs:
            assert source != requester and source in index.where(run[0]) and source in index.where(run[-1])
        if not runs:
            assert not _locate_reference(index, query, requester, "n0", 1 << 20)


class _CountingDict(dict):
    probes = 0

    def get(self, key, default=None):
        type(self).probes += 1
        return super().get(key, default)


def test_location_pieces_probe_a_long_chain_logarithmically():
    from cache_actors.cluster.prefix_route import location_pieces

    chain = [h(i) for i in range(1, 2001)]
    locations = _CountingDict({block: 0b100 for block in chain[:1500]})  # a shard holds 1500 blocks
    locations.update({block: locations.get(block, 0) | 0b1 for block in chain[1200:1800]})  # Redis a demoted run
    _CountingDict.probes = 0
    pieces = location_pieces(chain, locations, usable=0b101)
    assert pieces == [(0, 1200, 0b100), (1200, 1500, 0b101), (1500, 1800, 0b1)]
    assert _CountingDict.probes <= 4 * 12  # ~log2(2000) per place boundary, not one per block
    assert location_pieces(chain, locations, usable=0b10) == []
    assert location_pieces([], locations, usable=0b101) == []


def test_holders_are_the_shards_with_at_least_one_block():
    index = GlobalIndex()
    synced(index, "a")
    synced(index, "b")
    assert index.holders() == frozenset()
    index.apply("a", "n1", "e1", 0, stored(1, 2))
    assert index.holders() == {"a"}
    index.apply("a", "n1", "e1", 2, [(EVICTED, h(1)), (EVICTED, h(2))])
    assert index.holders() == frozenset()
    index.apply("b", "n1", "e1", 0, stored(3))
    index.purge("b")
    assert index.holders() == frozenset()
