"""The local disk tier: one file per block, written atomically, bounded in count.

Reads run in a worker thread under a deadline so a slow disk never stalls
the shard's event loop. Files are the `wire` format, so a torn or foreign
file fails its checksum and is never used.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

from cache_actors.tiers.base import TierCounters


class DiskTier:
    name = "disk"

    def __init__(self, directory: str | Path, *, max_blocks: int = 4096, timeout_s: float = 0.2) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_blocks = max_blocks
        self.timeout_s = timeout_s
        self.counters = TierCounters()
        # Oldest first; rebuilt from the directory so a restart keeps its blocks.
        files = sorted(self.directory.glob("*.kvb"), key=lambda p: p.stat().st_mtime)
        self._files: OrderedDict[str, None] = OrderedDict((p.stem, None) for p in files)
        self._lock = threading.Lock()  # writes run in worker threads

    def _path(self, block_hash: bytes) -> Path:
        return self.directory / f"{block_hash.hex()}.kvb"

    def _read(self, hashes: Sequence[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for block_hash in hashes:
            try:
                out.append(self._path(block_hash).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out

    def _write(self, block_hash: bytes, blob: bytes) -> None:
        path = self._path(block_hash)
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        with self._lock:
            self._evict_over_cap(block_hash)

    def _evict_over_cap(self, block_hash: bytes) -> None:
        self._files[block_hash.hex()] = None
        self._files.move_to_end(block_hash.hex())
        while len(self._files) > self.max_blocks:
            old, _ = self._files.popitem(last=False)
            (self.directory / f"{old}.kvb").unlink(missing_ok=True)

    async def get_many(self, hashes: Sequence[bytes]) -> list[bytes | None]:
        if not hashes:
            return []
        try:
            values = await asyncio.wait_for(asyncio.to_thread(self._read, hashes), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            self.counters.timeouts += 1
            return [None] * len(hashes)
        except OSError:
            self.counters.errors += 1
            return [None] * len(hashes)
        found = sum(v is not None for v in values)
        self.counters.hits += found
        self.counters.misses += len(values) - found
        return values

    async def put(self, block_hash: bytes, blob: bytes) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._write, block_hash, blob), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            self.counters.timeouts += 1
            return False
        except OSError:
            self.counters.errors += 1
            return False
        self.counters.writes += 1
        return True

    async def probe(self) -> tuple[bool, str]:
        """(reachable, detail): the folder exists and is writable, checked in a thread under a deadline."""
        def check() -> bool:
            return self.directory.is_dir() and os.access(self.directory, os.W_OK | os.X_OK)

        try:
            ok = await asyncio.wait_for(asyncio.to_thread(check), self.timeout_s * 10)
        except (asyncio.TimeoutError, TimeoutError):
            return False, f"{self.directory}: no answer within {self.timeout_s * 10:g} s"
        return ok, f"{self.directory} ({len(self._files)} blocks)" if ok else f"{self.directory}: not a writable folder"

    async def close(self) -> None:
        return None
