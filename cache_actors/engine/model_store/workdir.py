"""The private work folders of pulls: `.pull-<name>-<random>` under the store's root.

A pull downloads, unzips and converts inside its work folder and only renames
the finished model out of it, so the folder is removed whatever happens:
on return, on any exception and on Ctrl-C. A pull that was killed outright
(SIGKILL, out of memory, power loss) cannot clean up; its folder names its
host and process, and the next pull on that host removes it once that process
is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

PULL_PREFIX = ".pull-"
"""Work folders start with a dot: listing the store never takes one for a model."""
OWNER_FILE = "owner.json"


@contextmanager
def pull_workdir(root: Path, name: str) -> Iterator[Path]:
    """A fresh work folder under `root` (created if needed), removed when the block exits, however it exits."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_workdirs(root)
    work = Path(tempfile.mkdtemp(prefix=f"{PULL_PREFIX}{name}-", dir=root))
    try:
        (work / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        yield work
    finally:
        _remove(work)


def remove_stale_workdirs(root: Path) -> list[Path]:
    """Remove the work folders of pulls on this host whose process has exited; returns what was removed.

    A folder of another host (a shared store) or without an owner file is left alone: its pull may be running.
    """
    removed = []
    for work in root.glob(f"{PULL_PREFIX}*"):
        try:
            owner = json.loads((work / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0))):
            logger.info("removing %s, left by pull process %s that no longer runs", work, owner.get("pid"))
            _remove(work)
            removed.append(work)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if work.exists():
        logger.warning("could not remove the pull work folder %s; delete it by hand", work)
