"""The code samples of README.md, so tests can run each one as a reader would paste it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
LOCAL_SERVER = "http://localhost:8000"
"""Where the README's samples expect `blatam up`; tests swap in their own Serve instance."""


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of `language` in README.md, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def needs_server(block: str) -> bool:
    """Whether the sample talks to a running system (`blatam up` on the default port)."""
    return "localhost:8000" in block
