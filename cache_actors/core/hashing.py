"""Content-addressed block keys.

``hash_i = sha256(hash_{i-1} || token_ids of block i)`` with a root hash that
folds in everything that makes KV incompatible: model id, dtype, block size,
KV layout and a tenant salt. SHA-256 (never Python ``hash()``) makes keys equal
across processes and machines; a fixed test vector, checked at import of the
engine and in the tests, turns a silent change of the scheme into a loud error.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from typing import NewType, Sequence

BlockHash = NewType("BlockHash", bytes)

#: Bump when the byte layout hashed below changes: old persisted caches then
#: stop matching instead of returning wrong KV.
HASH_SCHEME_VERSION = 1


@dataclass(frozen=True, slots=True)
class CacheNamespace:
    """What two caches must agree on before their blocks are interchangeable."""

    model_id: str
    dtype: str
    block_size: int
    kv_layout: str
    tenant: str = ""

    def root_hash(self) -> BlockHash:
        """Hash that chains start from; differs for every namespace field."""
        payload = json.dumps({"v": HASH_SCHEME_VERSION, **asdict(self)}, sort_keys=True, separators=(",", ":"))
        return BlockHash(hashlib.sha256(payload.encode("utf-8")).digest())

    def without_tenant(self) -> "CacheNamespace":
        return CacheNamespace(self.model_id, self.dtype, self.block_size, self.kv_layout, "")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


#: Where a cache keeps the tenant tag of a chain's first block (`BlockNode.extra`).
TENANT_KEY = "tenant"


def tenant_tag(tenant_id: str | None) -> str | None:
    """What a cache stores to know a chain's tenant: a digest, so tenant ids never sit in shard memory or
    persisted sets in clear. ``None`` for no tenant. `blatam cache clear --tenant` derives
    the same tag from the id the operator gives."""
    if not tenant_id:
        return None
    return hashlib.sha256(b"blatam-tenant\0" + tenant_id.encode("utf-8")).hexdigest()[:32]


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    # Fixed-width little-endian uint32: unambiguous, and independent of the
    # platform and of how the caller stored the ids.
    return struct.pack(f"<{len(token_ids)}I", *token_ids)


def hash_block_tokens(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """Key of one block given its parent's key and its own token ids."""
    return BlockHash(hashlib.sha256(parent + _token_bytes(token_ids)).digest())


def hash_prompt_blocks(root: BlockHash, token_ids: Sequence[int], block_size: int) -> list[BlockHash]:
    """Chained keys of every *full* block of ``token_ids``; a partial tail gets none."""
    hashes: list[BlockHash] = []
    parent = root
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block_tokens(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


# A fixed namespace and token sequence with the hashes they must give. If this
# ever fails, keys written by other processes or versions will not match.
_TEST_NAMESPACE = CacheNamespace(model_id="test-vector", dtype="float32", block_size=4, kv_layout="L2H2D8")
_TEST_TOKENS = list(range(10))
TEST_VECTOR_HEX = (
    "ef1aac0fb96a05ad7e0092d7b64a0269b2c1ab703330c59586e0a5d45a6867a8",
    "7935ef1e83e066b3082458edd6507fd3b9c71d8c2cdebc4b6a8e0f04e124ed76",
    "be84d98260821327bc7fc5104934036f188f8f6e6ca81b2251f003c8478427e0",
)


def check_test_vector() -> None:
    """Raise if the hashing scheme no longer reproduces the recorded vector."""
    root = _TEST_NAMESPACE.root_hash()
    blocks = hash_prompt_blocks(root, _TEST_TOKENS, _TEST_NAMESPACE.block_size)
    got = (root.hex(), *(b.hex() for b in blocks))
    if got != TEST_VECTOR_HEX:
        raise RuntimeError(
            "KV block hashing does not reproduce its test vector: keys would not match "
            f"other processes or persisted caches (got {got}, expected {TEST_VECTOR_HEX})"
        )
