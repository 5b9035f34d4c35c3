"""Result files on disk: written atomically, named by job id.

A result is written to a hidden temp file in the same folder, flushed and
fsynced, then renamed over its final name (``os.replace`` is atomic on POSIX),
so a reader sees either no file or the whole file, and a crash mid-write
leaves only a temp file that `sweep_temp` removes later.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

_NAME = re.compile(r"^[0-9a-f]{32}\.[a-z]{2,5}$")
_TEMP_PREFIX = ".tmp-"


class ResultStore:
    """A folder of finished export files (``<job id>.<ext>``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """Where result ``name`` lives; refuses anything but our own names."""
        if not _NAME.match(name):
            raise ValueError(f"not a result file name: {name!r}")
        return self.root / name

    def write(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name`` all-or-nothing; return the final path."""
        final = self.path(name)
        temp = self.root / f"{_TEMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        return final

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def sweep_temp(self, *, older_than_s: float = 3600.0) -> int:
        """Remove temp files left by writers that died mid-write."""
        removed = 0
        cutoff = time.time() - older_than_s
        for entry in self.root.glob(f"{_TEMP_PREFIX}*"):
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
