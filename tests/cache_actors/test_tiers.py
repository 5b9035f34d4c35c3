"""Serialized blocks and the Redis/disk tiers (a private redis-server, real files; no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cache_actors.core.block_checksum import block_checksum
from cache_actors.tiers import DiskTier, RedisTier, WireError, decode_block, encode_block
from tests.cache_actors.redis_server import PrivateRedis

SPECS = {"q": ((2, 4), "int8"), "scale": ((2,), "float32")}


def block(seed: int = 0) -> tuple[dict[str, np.ndarray], bytes]:
    rng = np.random.default_rng(seed)
    parts = {"q": rng.integers(-100, 100, (1, 2, 4), dtype=np.int8), "scale": rng.random((1, 2), dtype=np.float32)}
    return parts, block_checksum(parts, 0)


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd"])
def test_wire_round_trip_keeps_bytes_and_checksum(compression):
    parts, checksum = block()
    blob = encode_block(parts, codec="int8", dtypes={"q": "int8", "scale": "float32"}, checksum=checksum, compression=compression)
    decoded, got = decode_block(blob, codec="int8", specs=SPECS, checksum=checksum)
    assert got == checksum
    for name in parts:
        np.testing.assert_array_equal(decoded[name], parts[name])


def test_wire_refuses_corrupt_foreign_and_mismatched_blocks():
    parts, checksum = block()
    blob = encode_block(parts, codec="int8", dtypes={"q": "int8", "scale": "float32"}, checksum=checksum, compression="none")
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    with pytest.raises(WireError, match="checksum"):
        decode_block(bytes(flipped), codec="int8", specs=SPECS)
    with pytest.raises(WireError):
        decode_block(blob[:-3], codec="int8", specs=SPECS)
    with pytest.raises(WireError, match="codec"):
        decode_block(blob, codec="int4", specs=SPECS)
    with pytest.raises(WireError, match="checksum"):
        decode_block(blob, codec="int8", specs=SPECS, checksum=b"\0" * 16)
    with pytest.raises(WireError):
        decode_block(b"garbage", codec="int8", specs=SPECS)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_tier_round_trip_ttl_and_nx(private_redis):
    tier = RedisTier(private_redis.url, key_prefix="t", ttl_s=60)
    try:
        assert await tier.put(b"\1" * 32, b"first")
        assert await tier.put(b"\1" * 32, b"second")  # NX: the first copy stays
        assert await tier.get_many([b"\1" * 32, b"\2" * 32]) == [b"first", None]
        assert 0 < private_redis.client().ttl(tier.key(b"\1" * 32)) <= 60
        assert (tier.counters.hits, tier.counters.misses) == (1, 1)
    finally:
        await tier.close()


async def test_redis_tier_down_answers_miss_within_its_timeout_then_recovers(private_redis):
    tier = RedisTier(private_redis.url, key_prefix="t", timeout_s=0.05, backoff_s=0.2)
    try:
        await tier.put(b"\1" * 32, b"v")
        private_redis.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await tier.get_many([b"\1" * 32]) == [None]
        assert await tier.put(b"\3" * 32, b"w") is False  # backing off: not even tried
        assert loop.time() - started < 1.0
        assert tier.counters.errors + tier.counters.timeouts == 1 and tier.counters.skipped == 1
        private_redis.start()
        await asyncio.sleep(0.25)
        assert await tier.put(b"\3" * 32, b"w")
        assert await tier.get_many([b"\3" * 32]) == [b"w"]
    finally:
        await tier.close()


async def test_a_snapshot_waits_out_a_redis_stall_that_a_block_read_does_not(private_redis):
    """The coordinator's snapshot client used the block tier's 50 ms bound: on a loaded machine a restarted
    coordinator's first read of a multi-MB snapshot timed out and it wrote no snapshot that round."""
    from cache_actors.actors.coordinator import snapshot_client

    blocks = RedisTier(private_redis.url, key_prefix="t", timeout_s=0.05)
    snapshots = snapshot_client(private_redis.url)
    blob = bytes(range(256)) * 16_384  # 4 MiB, a large index
    try:
        assert await snapshots.set_raw("blatam:kv:t-snap", blob)
        private_redis.client().execute_command("CLIENT", "PAUSE", 400, "ALL")
        block_read, (answered, value) = await asyncio.gather(blocks.get_many([b"\1" * 32]),
                                                             snapshots.read_raw("blatam:kv:t-snap"))
        assert block_read == [None] and blocks.counters.timeouts == 1  # the data path does not wait
        assert answered and value == blob
        private_redis.client().execute_command("CLIENT", "PAUSE", 400, "ALL")
        assert await snapshots.set_raw("blatam:kv:t-snap", blob[::-1])
        assert private_redis.client().get("blatam:kv:t-snap") == blob[::-1]
    finally:
        await asyncio.gather(blocks.close(), snapshots.close())


async def test_disk_tier_is_bounded_and_survives_restart(tmp_path):
    tier = DiskTier(tmp_path, max_blocks=2)
    for i in range(3):
        assert await tier.put(bytes([i]) * 32, b"blob%d" % i)
    assert await tier.get_many([b"\0" * 32, b"\2" * 32]) == [None, b"blob2"]
    again = DiskTier(tmp_path, max_blocks=2)
    assert await again.get_many([b"\1" * 32]) == [b"blob1"]
