"""BaseKVCache with synthetic KV: budget, leaf-first eviction, the `_evict` extension point."""

from __future__ import annotations

import random

import pytest
import torch

from cache_actors.codecs import KVShape, make_codec
from cache_actors.core.hashing import BlockHash, CacheNamespace, hash_prompt_blocks
from cache_actors.core.kv_cache import BaseKVCache
from cache_actors.policies import make_policy
from cache_actors.core.pool import blocks_for_budget

SHAPE = KVShape(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4)
ROOT = CacheNamespace("test", "float32", 4, "L2H2D4").root_hash()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def make_cache(num_blocks: int, policy: str = "lru", cls: type[BaseKVCache] = BaseKVCache, codec: str = "native") -> BaseKVCache:
    return cls(codec=make_codec(codec, SHAPE, torch.float32), block_size=4, num_blocks=num_blocks,
               policy=make_policy(policy), clock=Clock())


def kv_for(tokens: list[int]):
    """Deterministic fake KV: block i's values encode its tokens, so reads can be checked."""
    def kv_blocks(first: int, count: int) -> torch.Tensor:
        out = torch.empty((count, *SHAPE.block_shape()))
        for row in range(count):
            block_tokens = tokens[(first + row) * 4 : (first + row + 1) * 4]
            out[row] = float(sum(block_tokens) + first + row)
        return out
    return kv_blocks


def add(cache: BaseKVCache, tokens: list[int]) -> list[BlockHash]:
    hashes = hash_prompt_blocks(ROOT, tokens, 4)
    hit = cache.match(hashes)
    cache.store(hashes, hit.num_blocks, kv_for(tokens))
    cache.release(hit)
    return hashes


def test_budget_sizing():
    codec = make_codec("native", SHAPE, torch.float32)
    block_bytes = codec.bytes_per_block()
    assert blocks_for_budget(block_bytes=block_bytes, block_size=4, max_tokens=400, max_memory_mb=None) == 100
    assert blocks_for_budget(block_bytes=block_bytes, block_size=4, max_tokens=400, max_memory_mb=block_bytes * 7 / 2**20) == 7


def test_store_then_match_and_read_back_exact_values():
    cache = make_cache(16)
    tokens = list(range(12))
    hashes = add(cache, tokens)
    hit = cache.match(hashes)
    assert hit.num_blocks == 3
    out = torch.empty((2, 2, 2, 12, 4))
    cache.read(hit, out)
    cache.release(hit)
    expected = kv_for(tokens)(0, 3)
    for block in range(3):
        assert torch.equal(out[:, :, :, block * 4 : (block + 1) * 4], expected[block])


def test_match_stops_at_first_missing_block():
    cache = make_cache(16)
    hashes = add(cache, list(range(8)))
    other = hash_prompt_blocks(ROOT, list(range(4)) + [99, 98, 97, 96] + list(range(8, 12)), 4)
    hit = cache.match(other)
    assert hit.num_blocks == 1 and hit.nodes[0].key == hashes[0]
    cache.release(hit)


@pytest.mark.parametrize("policy", ["lru", "lfu", "adaptive"])
def test_pool_never_exceeds_budget_under_random_workload(policy):
    rng = random.Random(7)
    cache = make_cache(10, policy)
    prefixes = [[rng.randrange(1000) for _ in range(rng.choice([4, 8, 12]))] for _ in range(6)]
    held = []
    for step in range(400):
        tokens = rng.choice(prefixes) + [rng.randrange(1000) for _ in range(rng.randrange(0, 20))]
        hashes = hash_prompt_blocks(ROOT, tokens, 4)
        hit = cache.match(hashes)
        cache.store(hashes, hit.num_blocks, kv_for(tokens))
        if rng.random() < 0.2:
            held.append(hit)  # a running request keeps holding its prefix
        else:
            cache.release(hit)
        if held and rng.random() < 0.3:
            cache.release(held.pop(rng.randrange(len(held))))
        assert cache.pool.num_used == len(cache) <= 10
        assert cache.pool.bytes_used <= cache.pool.bytes_total
        for node in cache.index:  # every cached block's parent is cached: no orphans
            assert node.parent is None or node.parent.key in cache.index
        for hit in held:
            assert all(node.key in cache.index for node in hit.nodes), "a held block was evicted"
    for hit in held:
        cache.release(hit)


def test_leaves_are_evicted_before_their_ancestors():
    cache = make_cache(4)
    chain = add(cache, list(range(16)))  # 4 blocks, one chain, pool full
    evicted_order = []
    original = cache.index.remove

    def spy(node, now):
        evicted_order.append(node.key)
        original(node, now)

    cache.index.remove = spy
    add(cache, [500 + i for i in range(16)])  # needs 4 blocks: the whole old chain goes
    assert evicted_order == list(reversed(chain))


def test_storing_after_release_never_evicts_the_parent_of_the_new_blocks():
    """The engine releases its prefix hit before it stores the rest of the prompt, so the parent of the
    first new block is an unheld leaf, and with a full pool the least recently used one: making room
    must take another block. (It was evicted, its child's insert failed, and the slot leaked.)"""
    cache = make_cache(2)
    first = add(cache, list(range(8)))[:1]  # one block
    other = add(cache, [900 + i for i in range(4)])  # pool full; `first` is the least recently used
    prompt = list(range(4)) + [500 + i for i in range(4)]
    hashes = hash_prompt_blocks(ROOT, prompt, 4)
    assert hashes[0] == first[0] and len(cache) == 2
    assert cache.store(hashes, 1, kv_for(prompt)) == 1
    assert hashes[0] in cache.index and hashes[1] in cache.index and other[0] not in cache.index
    assert cache.pool.num_used == len(cache) == 2


def test_held_blocks_are_never_evicted_and_store_stops_without_room():
    cache = make_cache(3)
    hashes = add(cache, list(range(12)))
    hit = cache.match(hashes)
    stored = add(cache, [900 + i for i in range(8)])
    assert all(h in cache.index for h in hashes)
    assert not any(h in cache.index for h in stored)
    assert cache.counters.no_room == 1
    cache.release(hit)


class EvictNewestFirst(BaseKVCache):
    """A user policy through the documented extension point: evict the newest evictable block."""

    def _evict(self, num_tokens: int) -> int:
        freed = 0
        while freed < num_tokens:
            candidates = self.evictable_blocks()
            if not candidates:
                break
            self.evict_block(max(candidates, key=lambda node: node.created))
            freed += self.block_size
        return freed


def test_subclass_overriding_evict_changes_what_is_evicted():
    default, custom = make_cache(3), make_cache(3, cls=EvictNewestFirst)
    for cache in (default, custom):
        for start in (0, 100, 200):
            add(cache, [start + i for i in range(4)])  # three one-block prompts, pool full
        add(cache, [300 + i for i in range(4)])        # a fourth needs one eviction
    first = hash_prompt_blocks(ROOT, [0, 1, 2, 3], 4)[0]
    third = hash_prompt_blocks(ROOT, [200, 201, 202, 203], 4)[0]
    assert first not in default.index and third in default.index  # LRU drops the oldest
    assert first in custom.index and third not in custom.index    # the subclass drops the newest


def test_evict_block_refuses_non_evictable():
    cache = make_cache(8, cls=EvictNewestFirst)
    hashes = add(cache, list(range(8)))
    with pytest.raises(ValueError):
        cache.evict_block(cache.index.get(hashes[0]))  # has a child


def test_failed_write_leaves_no_block_behind():
    cache = make_cache(8)
    hashes = hash_prompt_blocks(ROOT, list(range(8)), 4)

    def broken(first, count):
        raise RuntimeError("device error while copying")

    with pytest.raises(RuntimeError):
        cache.store(hashes, 0, broken)
    assert len(cache) == 0 and cache.pool.num_free == 8
    assert add(cache, list(range(8))) == hashes and len(cache) == 2


def test_clear_refuses_while_held_and_empties_otherwise():
    cache = make_cache(8)
    hashes = add(cache, list(range(8)))
    hit = cache.match(hashes)
    with pytest.raises(RuntimeError):
        cache.clear()
    cache.release(hit)
    cache.clear()
    assert len(cache) == 0 and cache.pool.num_free == 8


@pytest.mark.parametrize("codec", ["native", "fp16", "int8", "int4"])
def test_every_codec_stores_and_reads(codec):
    cache = make_cache(8, codec=codec)
    tokens = list(range(8))
    hashes = add(cache, tokens)
    hit = cache.match(hashes)
    out = torch.empty((2, 2, 2, 8, 4))
    cache.read(hit, out)
    cache.release(hit)
    expected = kv_for(tokens)(0, 2)
    assert torch.allclose(out[:, :, :, :4], expected[0], rtol=1e-2) and torch.allclose(out[:, :, :, 4:], expected[1], rtol=1e-2)


def test_policy_sees_every_request_whole_and_knows_the_capacity():
    cache = make_cache(10, "adaptive")
    assert cache.index.policy.capacity == 10
    seen = []
    original = cache.index.policy.on_request
    cache.index.policy.on_request = lambda keys, now, tokens=None: (seen.append(list(keys)), original(keys, now, tokens))
    tokens = list(range(16))
    hashes = add(cache, tokens)
    hit = cache.match(hashes, limit=2)
    assert hit.num_blocks == 2 and seen[-1] == hashes  # the whole request, though only 2 blocks are reused
    cache.release(hit)


def test_drop_unheld_keeps_a_held_chain_whole_and_drops_the_rest():
    cache = make_cache(16)
    held_chain, free_chain = add(cache, list(range(12))), add(cache, list(range(100, 112)))
    hit = cache.match(held_chain[:2])
    assert cache.drop_unheld() == 4  # the free chain, and the held chain's unheld leaf
    assert [cache.contains(h) for h in held_chain] == [True, True, False]
    assert not any(cache.contains(h) for h in free_chain)
    cache.release(hit)
    assert cache.drop_unheld() == 2 and len(cache) == 0
