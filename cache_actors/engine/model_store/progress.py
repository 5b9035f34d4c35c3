"""How a pull reports progress: a small protocol the CLI draws as rich bars and tests record.

A pull runs in steps (download, verify, extract, convert, save, manifest).
Each step is started with its size, advanced as work is done and finished;
`unit` says whether the sizes are bytes or sub-steps, so a bar can show
"48.2/92.9 MB" or "2/4".
"""

from __future__ import annotations

from typing import Literal, Protocol

ProgressUnit = Literal["bytes", "steps"]

STEP_DOWNLOAD = "download"
STEP_VERIFY = "verify"
STEP_EXTRACT = "extract"
STEP_CONVERT = "convert"
STEP_SAVE = "save"
STEP_MANIFEST = "manifest"
PULL_STEPS: tuple[str, ...] = (STEP_DOWNLOAD, STEP_VERIFY, STEP_EXTRACT, STEP_CONVERT, STEP_SAVE, STEP_MANIFEST)
"""In the order a pull runs them."""


class PullProgress(Protocol):
    """Receives a pull's steps. Calls come in order: start, advance*, finish; one step at a time."""

    def start(self, step: str, total: int | None, unit: ProgressUnit = "bytes") -> None:
        """A step begins; `total` is None when its size is not known (pip's download)."""

    def advance(self, amount: int) -> None:
        """`amount` more of the current step is done."""

    def finish(self) -> None:
        """The current step is done."""


class NullProgress:
    """Reports nowhere: the default when a caller passes no progress."""

    def start(self, step: str, total: int | None, unit: ProgressUnit = "bytes") -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def finish(self) -> None:
        pass
