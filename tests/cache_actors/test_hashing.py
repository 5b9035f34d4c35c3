import hashlib
import json
import struct
import subprocess
import sys

from cache_actors.core.hashing import (
    HASH_SCHEME_VERSION,
    TEST_VECTOR_HEX,
    CacheNamespace,
    check_test_vector,
    hash_block_tokens,
    hash_prompt_blocks,
)


def test_test_vector_matches_recorded_values():
    check_test_vector()


def test_test_vector_matches_the_documented_scheme():
    """Re-derive the vector from the spec with plain hashlib: sha256(parent || uint32le tokens)."""
    payload = json.dumps(
        {"v": HASH_SCHEME_VERSION, "model_id": "test-vector", "dtype": "float32", "block_size": 4,
         "kv_layout": "L2H2D8", "tenant": ""},
        sort_keys=True, separators=(",", ":"),
    )
    root = hashlib.sha256(payload.encode()).digest()
    b0 = hashlib.sha256(root + struct.pack("<4I", 0, 1, 2, 3)).digest()
    b1 = hashlib.sha256(b0 + struct.pack("<4I", 4, 5, 6, 7)).digest()
    assert (root.hex(), b0.hex(), b1.hex()) == TEST_VECTOR_HEX


def test_only_full_blocks_get_keys():
    root = CacheNamespace("m", "float32", 4, "L").root_hash()
    assert len(hash_prompt_blocks(root, list(range(11)), 4)) == 2
    assert hash_prompt_blocks(root, [1, 2, 3], 4) == []


def test_keys_chain_on_the_whole_prefix():
    root = CacheNamespace("m", "float32", 2, "L").root_hash()
    a = hash_prompt_blocks(root, [1, 2, 3, 4], 2)
    b = hash_prompt_blocks(root, [9, 9, 3, 4], 2)
    assert a[1] != b[1], "same block tokens after a different prefix must get a different key"
    assert a[0] == hash_block_tokens(root, [1, 2])


def test_every_namespace_field_changes_the_root():
    base = CacheNamespace("m", "float32", 16, "L2H2D8", "")
    variants = [
        CacheNamespace("m2", "float32", 16, "L2H2D8", ""),
        CacheNamespace("m", "bfloat16", 16, "L2H2D8", ""),
        CacheNamespace("m", "float32", 32, "L2H2D8", ""),
        CacheNamespace("m", "float32", 16, "L4H2D8", ""),
        CacheNamespace("m", "float32", 16, "L2H2D8", "tenant-a"),
    ]
    roots = {base.root_hash(), *(v.root_hash() for v in variants)}
    assert len(roots) == 6


def test_keys_are_equal_in_another_process():
    code = (
        "from cache_actors.core.hashing import CacheNamespace, hash_prompt_blocks;"
        "r=CacheNamespace('m','float32',4,'L').root_hash();"
        "print(hash_prompt_blocks(r, list(range(12)), 4)[-1].hex())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".").stdout.strip()
    root = CacheNamespace("m", "float32", 4, "L").root_hash()
    assert other == hash_prompt_blocks(root, list(range(12)), 4)[-1].hex()
