"""The shard's block store: leases, events, demotion capture, shared pool (no Ray)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from cache_actors.core.block_checksum import block_checksums
from cache_actors.codecs import KVShape, make_codec
from cache_actors.core.hashing import CacheNamespace, hash_prompt_blocks
from cache_actors.policies import make_policy
from cache_actors.cluster.shard_store import EVICTED, STORED, TOUCHED, ShardStore
from cache_actors.cluster.shm_pool import SharedBlockPool

SHAPE = KVShape(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4)
ROOT = CacheNamespace("m", "float32", 4, "L2H2D8").root_hash()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_store(num_blocks: int = 8, shared: bool = False, **kwargs) -> tuple[ShardStore, Clock]:
    codec = make_codec("native", SHAPE, torch.float32)
    clock = Clock()
    pool = SharedBlockPool.create(codec.part_specs(), num_blocks, label="test", epoch="e1") if shared else None
    store = ShardStore(codec=codec, block_size=4, num_blocks=num_blocks, policy=make_policy("lru"), pool=pool, clock=clock, **kwargs)
    return store, clock


def chain(n: int, salt: int = 0) -> list:
    return hash_prompt_blocks(ROOT, [salt * 1000 + i for i in range(4 * n)], 4)


def write(store: ShardStore, hashes, start: int = 0, seed: int = 0) -> torch.Tensor:
    """A client's write: reserve, copy into the pool, commit with checksums."""
    kv = torch.randn((len(hashes), *SHAPE.block_shape()), generator=torch.Generator().manual_seed(seed))
    lease, slots = store.reserve(hashes, start)
    if lease:
        rows = torch.tensor([p for p, _ in slots])
        encoded = store.codec.encode(kv[rows])
        store.pool.write([s for _, s in slots], encoded)
        store.commit(lease, block_checksums(encoded, range(len(slots))))
    return kv


def test_reserve_commit_then_lookup_returns_slots_and_checksums():
    store, _ = make_store()
    hashes = chain(3)
    kv = write(store, hashes)
    assert store.lookup(hashes[:1]).lease_id  # visible after commit
    hit = store.lookup(hashes + chain(1, salt=9))
    assert len(hit.slots) == 3
    parts = store.pool.read(hit.slots)
    assert torch.equal(parts["kv"], kv)
    assert block_checksums(parts, range(3)) == hit.checksums
    assert store.release_lease(hit.lease_id)
    assert not store.release_lease(hit.lease_id)


def test_a_request_shows_the_policy_every_block_while_reuse_stops_at_the_limit():
    store, _ = make_store()
    hashes = chain(4)
    write(store, hashes)
    seen: list[list] = []
    policy = store.index.policy
    on_request = policy.on_request
    policy.on_request = lambda keys, now, tokens=None: (seen.append(list(keys)), on_request(keys, now, tokens))
    store.take_events()
    hit = store.lookup(hashes, limit=2, request=True)
    assert len(hit.slots) == 2 and seen == [hashes]
    store.release_lease(hit.lease_id)
    assert len(store.lookup(hashes, limit=3).slots) == 3 and len(seen) == 1  # a re-lookup is no new request
    entries, _ = store.read_blocks(hashes, limit=3, request=True)  # a client on another node
    assert [e[0] for e in entries] == hashes[:3] and seen == [hashes, hashes]
    assert len(store.read_blocks(hashes)[0]) == 4 and len(seen) == 2  # a peer's copy is no request
    stats = store.get_stats()
    assert stats["requests"] == 2 and stats["request_blocks"] == 8
    touched = [event[1] for event in store.take_events()[1] if event[0] == TOUCHED]
    assert touched == hashes[:2] + hashes[:3] + hashes[:3]


def test_reserve_after_a_released_lookup_keeps_the_parent_and_leaks_no_slot():
    """A client reads its prefix, releases the lease, prefills, then reserves the rest: with a full pool
    the parent is the least recently used leaf, and must not be what makes room (it was, the reserve
    failed, and each failure leaked a slot until the pool held no cached block)."""
    store, clock = make_store(num_blocks=2)
    prompt, other = chain(2), chain(1, salt=7)
    write(store, prompt[:1])
    clock.now = 1.0
    write(store, other)  # pool full; the prompt's first block is the least recently used
    clock.now = 2.0
    hit = store.lookup(prompt, request=True)
    store.release_lease(hit.lease_id)
    clock.now = 3.0
    store.release_lease(store.lookup(other).lease_id)  # another request used the other block since
    assert len(hit.slots) == 1
    write(store, prompt, start=1)
    assert len(store.lookup(prompt).slots) == 2
    assert store.pool.num_used == len(store.index) == 2


def test_pending_blocks_are_invisible_and_not_extended_by_other_writers():
    store, _ = make_store()
    hashes = chain(3)
    lease, slots = store.reserve(hashes, 0)
    assert len(slots) == 3
    assert store.lookup(hashes).lease_id == 0
    assert store.reserve(hashes, 0) == (0, [])  # another writer backs off
    assert store.reserve(hashes, 2) == (0, [])  # parent pending
    store.commit(lease, [b"x" * 16] * 3)
    assert len(store.lookup(hashes).slots) == 3


def test_expired_leases_unpin_and_abort():
    store, clock = make_store(num_blocks=4, lease_ttl_s=5)
    hashes = chain(2)
    write(store, hashes)
    hit = store.lookup(hashes)
    pending, _ = store.reserve(chain(2, salt=1), 0)
    assert len(store.evictable_blocks()) == 0
    clock.now = 6
    assert store.expire_leases() == 2
    assert store.num_leases == 0
    assert len(store) == 2  # the aborted pending blocks are gone, the read ones stay
    assert not store.release_lease(hit.lease_id)
    assert store.pool.num_free == 2


def test_events_have_consecutive_sequence_numbers_and_dump_resumes_them():
    store, _ = make_store(num_blocks=3)
    write(store, chain(2))
    store.release_lease(store.lookup(chain(2)).lease_id)
    first, events = store.take_events()
    assert first == 0
    assert [e[0] for e in events] == [STORED, STORED, TOUCHED, TOUCHED]
    assert events[1][2] == chain(2)[0]  # stored events carry the parent
    write(store, chain(2, salt=1))  # evicts one block of the first chain
    first, events = store.take_events()
    assert first == 4 and [e[0] for e in events].count(EVICTED) == 1
    seq, dump, tiers = store.dump()
    assert seq == store.seq and len(dump) == 3 and tiers == []
    assert {h for h, _, _ in dump} == {chain(2)[0], *chain(2, salt=1)}


def test_hot_blocks_are_captured_for_demotion_on_eviction():
    store, _ = make_store(num_blocks=2, capture_demotions=True, demote_min_hits=99)
    hot, cold = chain(1), chain(1, salt=1)
    kv = write(store, hot)
    write(store, cold)
    store.mark_hot(hot)
    write(store, chain(2, salt=2))  # needs both slots
    demotions = store.take_demotions()
    assert [d.block_hash for d in demotions] == hot
    store.note_demoted(hot[0], "redis")
    assert store.dump()[2] == [(hot[0], "redis")]
    assert torch.equal(torch.from_numpy(demotions[0].parts["kv"]), kv)
    assert demotions[0].checksum == block_checksums({"kv": kv}, [0])[0]


def test_insert_verified_refuses_corrupt_rows_and_stops_the_chain():
    source, _ = make_store()
    hashes = chain(3)
    write(source, hashes)
    entries, arrays = source.read_blocks(hashes)
    parts = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    parts["kv"][1].add_(1.0)  # corrupt the second block
    target, _ = make_store()
    inserted, mismatches = target.insert_verified(entries, parts)
    assert (inserted, mismatches) == (1, 1)
    assert len(target.lookup(hashes).slots) == 1


def test_drop_removes_a_block_and_its_descendants():
    store, _ = make_store()
    hashes = chain(3)
    write(store, hashes)
    assert store.drop([hashes[1]]) == 2
    assert len(store) == 1


def _child_reads(handle, slots, queue) -> None:
    pool = SharedBlockPool.attach(handle)
    queue.put(pool.read(slots)["kv"].sum().item())


def test_shared_pool_is_visible_from_another_process():
    store, _ = make_store(shared=True)
    hashes = chain(2)
    kv = write(store, hashes)
    hit = store.lookup(hashes)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(store.pool.handle, hit.slots, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == pytest.approx(kv.sum().item(), rel=1e-5)


def tenant_write(store: ShardStore, hashes, tenant: str | None, start: int = 0) -> None:
    kv = torch.randn((len(hashes), *SHAPE.block_shape()))
    lease, slots = store.reserve(hashes, start, tenant)
    if lease:
        encoded = store.codec.encode(kv[torch.tensor([p for p, _ in slots])])
        store.pool.write([s for _, s in slots], encoded)
        store.commit(lease, block_checksums(encoded, range(len(slots))))


def test_clear_tenant_drops_its_chains_and_their_extensions_only():
    store, _ = make_store(num_blocks=16)
    acme, globex, shared = chain(3, salt=1), chain(2, salt=2), chain(2, salt=3)
    tenant_write(store, acme[:2], "acme")
    tenant_write(store, acme, "acme", start=2)  # a later block of the same chain (e.g. generated tokens)
    tenant_write(store, globex, "globex")
    tenant_write(store, shared, None)  # tenant isolation off: a block of no one tenant
    store.take_events()

    assert store.clear_tenant("acme") == (3, 0)
    assert len(store) == 4 and not store.lookup(acme).slots
    assert len(store.lookup(globex).slots) == 2 and len(store.lookup(shared).slots) == 2
    _, events = store.take_events()
    assert sorted(e[1] for e in events if e[0] == EVICTED) == sorted(acme)  # the coordinator forgets them
    assert store.clear_tenant("acme") == (0, 0) and store.clear_tenant("nobody") == (0, 0)


def test_clear_tenant_keeps_a_chain_a_request_holds_and_a_pending_write():
    store, _ = make_store(num_blocks=16)
    held, pending = chain(2, salt=1), chain(2, salt=2)
    tenant_write(store, held, "acme")
    hit = store.lookup(held)  # a running request reads it
    lease, _ = store.reserve(pending, 0, "acme")  # a write not committed yet
    assert store.clear_tenant("acme") == (0, 4)
    store.release_lease(hit.lease_id)
    store.release_lease(lease)  # the unfinished write is aborted: its blocks leave
    assert store.clear_tenant("acme") == (2, 0) and len(store) == 0


def test_a_chain_root_copied_in_keeps_its_tenant():
    source, _ = make_store()
    hashes = chain(2)
    tenant_write(source, hashes, "acme")
    entries, arrays = source.read_blocks(hashes)
    target, _ = make_store()
    assert target.insert_verified(entries, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, "acme") == (2, 0)
    assert target.clear_tenant("acme") == (2, 0)


def test_the_clear_generation_is_seen_by_every_mapper_and_the_owner_liveness_by_its_path():
    owner, _ = make_store(shared=True)
    mapper = SharedBlockPool.attach(owner.pool.handle)
    assert owner.pool.generation == mapper.generation == 0
    write(owner, chain(2))
    assert mapper.generation == 0  # storing is no reason to drop copies
    assert owner.pool.bump_generation() == 1 and mapper.generation == 1
    assert mapper.owner_alive()
    owner.pool.close()
    assert not mapper.owner_alive()  # a closed (or dead) shard no longer moves the word: its copies are not trusted


def test_reuse_reported_by_a_tier_in_front_is_a_hit_for_the_policy_and_the_coordinator():
    """A request the replica tier served alone (`actors.reuse_reports`) counts here as a lookup would,
    without a lease: under LRU the reused chain outlives a newer one nobody read."""
    store, clock = make_store(num_blocks=4)
    reused, idle = chain(2), chain(2, salt=1)
    write(store, reused)
    clock.now = 1.0
    write(store, idle)
    store.take_events()
    seen: list[list] = []
    policy = store.index.policy
    on_request = policy.on_request
    policy.on_request = lambda keys, now, tokens=None: (seen.append(list(keys)), on_request(keys, now, tokens))
    clock.now = 2.0
    assert store.note_reuse([(reused + chain(1, salt=7), 2), (chain(1, salt=8), 0)]) == 2
    assert seen == [reused + chain(1, salt=7), chain(1, salt=8)]  # the policy saw both whole requests
    assert [e for _, events in [store.take_events()] for e in events] == [(TOUCHED, h) for h in reused]
    assert store.num_leases == 0 and store.get_stats()["reuse_reports"] == 2
    assert store.note_reuse([(reused, 1)]) == 1  # ``reused`` caps the blocks touched
    assert store.note_reuse([(chain(2, salt=3), 2)]) == 0  # blocks it does not hold: nothing to touch
    clock.now = 3.0
    write(store, chain(2, salt=2))  # full: the least recently used chain goes, and that is no longer ``reused``
    assert len(store.lookup(reused).slots) == 2
    assert not store.lookup(idle).slots
