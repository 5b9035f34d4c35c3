"""Streamed SHA-256 of files: wheels, GGUFs and safetensors are hundreds of MB, never read whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cache_actors.engine.model_store.progress import PullProgress

CHUNK_BYTES = 1 << 20
"""Read size for hashing and copying: large enough to be fast, small enough to report progress often."""


def sha256_file(path: Path, progress: PullProgress | None = None) -> str:
    """The hex SHA-256 of `path`, advancing `progress` (already started) by the bytes read."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return digest.hexdigest()
