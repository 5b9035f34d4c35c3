"""Saving the cache to disk and loading it back, safely.

Format: a directory with ``blocks.safetensors`` (one tensor per codec part,
``[n, *part_shape]``, blocks parents-first) and ``manifest.json`` (format
version, namespace, codec, block hashes and parents, the tenant tag of each
chain's first block, a SHA-256 per block and of the tensor file).
safetensors holds only raw tensors, so loading a file
can never run code (no pickle, no ``torch.load``). Everything is checked before
the first block enters the cache: a truncated, corrupted or foreign file is
refused with a `PersistenceError` and the cache is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cache_actors.core.hashing import HASH_SCHEME_VERSION, TENANT_KEY, BlockHash
from cache_actors.core.kv_cache import BaseKVCache

FORMAT_NAME = "blatam-kv-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "blocks.safetensors"
_TENSOR_PREFIX = "part."


class PersistenceError(ValueError):
    """A persisted cache that must not be loaded (corrupt, truncated or foreign)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _block_checksums(parts: dict[str, torch.Tensor], count: int) -> list[str]:
    """SHA-256 of each block's bytes over all parts (in sorted part order)."""
    flat = {name: parts[name].contiguous().reshape(count, -1).view(torch.uint8) for name in sorted(parts)}
    sums = []
    for row in range(count):
        digest = hashlib.sha256()
        for tensor in flat.values():
            digest.update(tensor[row].numpy().tobytes())
        sums.append(digest.hexdigest())
    return sums


def _codec_spec(cache: BaseKVCache) -> dict[str, Any]:
    return {
        "name": cache.codec.name,
        "parts": {name: {"shape": list(shape), "dtype": str(dtype)} for name, (shape, dtype) in cache.codec.part_specs().items()},
    }


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """A copy of every cached block and what the manifest says of it, taken at one moment."""

    namespace: dict[str, Any]
    codec: dict[str, Any]
    block_size: int
    entries: list[tuple[BlockHash, BlockHash | None, int]]
    """(hash, parent hash, hits), parents first."""
    parts: dict[str, torch.Tensor]
    tenants: dict[BlockHash, str] = field(default_factory=dict)
    """Tenant tags of chain roots (`hashing.tenant_tag`), so a loaded set can still be cleared per tenant."""


def snapshot_cache(cache: BaseKVCache, namespace: dict[str, Any]) -> CacheSnapshot:
    """Copy the cache's blocks (fast, in memory): the part that must not race the cache's own thread or loop."""
    nodes = cache.blocks_in_order()
    parts = cache.read_encoded(nodes) if nodes else {
        name: torch.empty((0, *shape), dtype=dtype) for name, (shape, dtype) in cache.codec.part_specs().items()
    }
    entries = [(node.key, node.parent.key if node.parent is not None else None, node.hits) for node in nodes]
    tenants = {node.key: node.extra[TENANT_KEY] for node in nodes if node.parent is None and node.extra.get(TENANT_KEY)}
    return CacheSnapshot(dict(namespace), _codec_spec(cache), cache.block_size, entries, parts, tenants)


def write_snapshot(snapshot: CacheSnapshot, path: str | Path) -> int:
    """Write `snapshot` to ``path`` (a directory), atomically (slow: checksums and disk; any thread)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    checksums = _block_checksums(snapshot.parts, len(snapshot.entries))
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file({_TENSOR_PREFIX + name: t.contiguous() for name, t in snapshot.parts.items()}, str(staging / TENSORS))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "hash_scheme": HASH_SCHEME_VERSION,
            "namespace": snapshot.namespace,
            "codec": snapshot.codec,
            "block_size": snapshot.block_size,
            "blocks": [
                {
                    "hash": bytes(block_hash).hex(),
                    "parent": bytes(parent).hex() if parent is not None else None,
                    "hits": hits,
                    "sha256": checksum,
                    **({"tenant": snapshot.tenants[block_hash]} if block_hash in snapshot.tenants else {}),
                }
                for (block_hash, parent, hits), checksum in zip(snapshot.entries, checksums)
            ],
            "file": {"name": TENSORS, "bytes": (staging / TENSORS).stat().st_size, "sha256": file_sha256(staging / TENSORS)},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(snapshot.entries)


def save_cache(cache: BaseKVCache, namespace: dict[str, Any], path: str | Path) -> int:
    """Write every cached block to ``path`` (a directory), atomically. Returns blocks written."""
    return write_snapshot(snapshot_cache(cache, namespace), path)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` so a reader never sees a half-written cache."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def read_versioned_json(path: Path, format_name: str, format_version: int, missing: str) -> dict[str, Any]:
    """A manifest file: a JSON object naming `format_name` at `format_version`; `PersistenceError` otherwise
    (`missing` says what a directory without the file is not)."""
    if not path.is_file():
        raise PersistenceError(f"{path.parent}: no {path.name}; {missing}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersistenceError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise PersistenceError(f"{path}: not a {format_name} manifest")
    if manifest.get("format_version") != format_version:
        raise PersistenceError(
            f"{path}: format version {manifest.get('format_version')!r}, this build reads {format_version}"
        )
    return manifest


def _read_manifest(directory: Path) -> dict[str, Any]:
    return read_versioned_json(directory / MANIFEST, FORMAT_NAME, FORMAT_VERSION, "not a persisted KV cache")


def _check_compatible(manifest: dict[str, Any], cache: BaseKVCache, namespace: dict[str, Any]) -> None:
    if manifest.get("hash_scheme") != HASH_SCHEME_VERSION:
        raise PersistenceError(f"block keys use hash scheme {manifest.get('hash_scheme')!r}, this build uses {HASH_SCHEME_VERSION}")
    theirs = manifest.get("namespace")
    if theirs != namespace:
        diff = sorted(k for k in set(namespace) | set(theirs or {}) if (theirs or {}).get(k) != namespace.get(k))
        raise PersistenceError(
            "persisted cache belongs to another model or layout (differs in "
            + ", ".join(f"{k}: file {(theirs or {}).get(k)!r} vs engine {namespace.get(k)!r}" for k in diff)
            + ")"
        )
    if manifest.get("codec") != _codec_spec(cache):
        raise PersistenceError(
            f"persisted cache uses codec {manifest.get('codec', {}).get('name')!r} with other parts; engine uses {cache.codec.name!r}"
        )


@dataclass(frozen=True, slots=True)
class VerifiedBlocks:
    """A persisted cache that passed every check, ready to insert."""

    entries: list[tuple[BlockHash, BlockHash | None, int]]
    parts: dict[str, torch.Tensor]
    tenants: dict[BlockHash, str] = field(default_factory=dict)


def read_verified(cache: BaseKVCache, namespace: dict[str, Any], path: str | Path) -> VerifiedBlocks:
    """Read ``path`` and check all of it against `cache` (format, model, codec, sizes, every checksum) without
    touching the cache: `PersistenceError` on anything wrong (slow: any thread)."""
    directory = Path(path)
    manifest = _read_manifest(directory)
    _check_compatible(manifest, cache, namespace)
    entries = manifest.get("blocks")
    file_info = manifest.get("file") or {}
    tensor_path = directory / TENSORS
    if not isinstance(entries, list) or not tensor_path.is_file():
        raise PersistenceError(f"{directory}: manifest lists no blocks or {TENSORS} is missing")
    if tensor_path.stat().st_size != file_info.get("bytes"):
        raise PersistenceError(f"{tensor_path}: size {tensor_path.stat().st_size} != {file_info.get('bytes')} (truncated?)")
    if file_sha256(tensor_path) != file_info.get("sha256"):
        raise PersistenceError(f"{tensor_path}: checksum mismatch (corrupted)")
    try:
        raw = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PersistenceError(f"{tensor_path}: unreadable ({exc})") from None
    specs = cache.codec.part_specs()
    count = len(entries)
    parts: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in specs.items():
        tensor = raw.get(_TENSOR_PREFIX + name)
        if tensor is None or tuple(tensor.shape) != (count, *shape) or tensor.dtype != dtype:
            raise PersistenceError(f"{tensor_path}: part {name!r} missing or of the wrong shape/dtype")
        parts[name] = tensor
    try:
        parsed = [
            (BlockHash(bytes.fromhex(e["hash"])), BlockHash(bytes.fromhex(e["parent"])) if e["parent"] else None, int(e["hits"]), e["sha256"])
            for e in entries
        ]
        tenants = {h: e["tenant"] for (h, p, _, _), e in zip(parsed, entries) if p is None and e.get("tenant") is not None}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PersistenceError(f"{directory}: malformed block entry ({exc})") from None
    if not all(isinstance(tag, str) and 0 < len(tag) <= 64 for tag in tenants.values()):
        raise PersistenceError(f"{directory}: malformed tenant tag")
    if count:
        for (block_hash, _, _, expected), actual in zip(parsed, _block_checksums(parts, count)):
            if expected != actual:
                raise PersistenceError(f"{directory}: block {block_hash.hex()[:16]} fails its checksum")
    return VerifiedBlocks([(h, p, hits) for h, p, hits, _ in parsed], parts, tenants)


def insert_verified_blocks(cache: BaseKVCache, blocks: VerifiedBlocks, directory: str | Path = "") -> int:
    """Add verified blocks to `cache` (all or nothing: `PersistenceError` if they do not fit)."""
    try:
        return cache.insert_encoded(blocks.entries, blocks.parts, blocks.tenants)
    except ValueError as exc:
        raise PersistenceError(f"{directory}: {exc}") from None


def load_cache(cache: BaseKVCache, namespace: dict[str, Any], path: str | Path) -> int:
    """Verify ``path`` completely, then add its blocks to ``cache``. Returns blocks added."""
    return insert_verified_blocks(cache, read_verified(cache, namespace, path), path)
