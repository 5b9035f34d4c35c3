"""Where and when `blatam bench report` ran: date, CPU, load, git revision, versions.

Read from the machine (``/proc/cpuinfo``, ``git``, package metadata), never
by importing torch: the page says what produced its numbers without the
report paying for a model library it does not use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from scripts.bench.report_markdown import RunInfo


def run_info(mode: str, command: str, total_s: float, load_start: tuple[float, float, float], root: Path) -> RunInfo:
    """Date, CPU, git revision and versions of this run (read from the machine, nothing imported)."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), "unknown CPU")
    revision = _git(root, "rev-parse", "--short", "HEAD") or "unknown"
    if _git(root, "status", "--porcelain", "--untracked-files=no"):
        revision += " + uncommitted changes"
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return RunInfo(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), cpu_model=cpu,
                   cpus=os.cpu_count() or 0, load_start=load_start, load_end=os.getloadavg(), git_revision=revision,
                   python=sys.version.split()[0], torch=torch, mode=mode, command=command, total_s=total_s)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
