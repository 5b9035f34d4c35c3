"""The README's Python samples that need no running system, run as a reader would: a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_samples import code_blocks, needs_server

STANDALONE = [block for block in code_blocks("python") if not needs_server(block)]


def test_the_readme_has_standalone_samples() -> None:
    assert STANDALONE, "README.md lost its in-process engine sample"


@pytest.mark.parametrize("sample", STANDALONE, ids=lambda block: block.splitlines()[-1][:40])
def test_readme_python_sample_runs(sample: str, tmp_path: Path) -> None:
    """The sample exits 0 in a fresh interpreter (its asserts included), writing only under its cwd."""
    done = subprocess.run([sys.executable, "-c", sample], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
