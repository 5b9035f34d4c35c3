"""Which model `blatam up` serves (`scripts.up_model.choose_model`), without starting anything.

`tests/scripts/test_up.py` runs `blatam up` for real once, where no model can
be pulled (the demo model serves, and the note reaches `/v1/models` and
`/health`); the installed real model is chosen here, and served end to end by
`tests/deployments/test_llm_real_model.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from scripts.up_model import DEFAULT_MODEL, ModelChoice, ModelChoiceError, apply_model, choose_model
from tests.scripts.test_up import unreachable_index_env


@pytest.fixture
def no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as `unreachable_index_env` makes a `blatam up`'s: every pull fails fast."""
    env = unreachable_index_env(dict(os.environ))
    for name in [n for n in os.environ if n.startswith("PIP_") and n not in env]:
        monkeypatch.delenv(name)
    for name in [n for n in env if n.startswith("PIP_")]:
        monkeypatch.setenv(name, env[name])


def _choose(spec: str | None, root: Path) -> ModelChoice:
    return choose_model(spec, None, root=root, console=Console(quiet=True))


@pytest.mark.real_model
def test_an_installed_default_model_is_served_without_a_pull(tmp_path: Path, smollm2_path: Path, no_index: None) -> None:
    (tmp_path / smollm2_path.name).symlink_to(smollm2_path, target_is_directory=True)
    choice = _choose(None, tmp_path)
    assert choice.model_path == str(tmp_path / smollm2_path.name) and choice.note is None
    assert choice.describe() == f"Model: SmolLM2-135M-Instruct ({tmp_path / smollm2_path.name})"


def test_a_default_model_that_cannot_be_pulled_falls_back_to_the_demo_model_and_says_why(tmp_path: Path,
                                                                                          no_index: None) -> None:
    choice = _choose(None, tmp_path)
    assert choice.model_path is None and choice.note.startswith(f"{DEFAULT_MODEL} could not be pulled")
    assert f"blatam model pull {DEFAULT_MODEL}" in choice.note
    assert not list(tmp_path.iterdir()), "a failed pull left files behind"


def test_an_explicit_model_that_cannot_be_pulled_is_an_error_not_the_demo_model(tmp_path: Path, no_index: None) -> None:
    with pytest.raises(ModelChoiceError, match=f"cannot pull {DEFAULT_MODEL}"):
        _choose(DEFAULT_MODEL, tmp_path)
    with pytest.raises(ModelChoiceError):
        _choose(str(tmp_path / "no-such-folder"), tmp_path)
    assert _choose("demo", tmp_path).model_path is None


def test_the_choice_and_its_note_go_into_the_llm_apps_args() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate({"applications": [
        {"name": "llm", "import_path": "deployments.llm:build_llm", "route_prefix": None, "args": {"model_note": "old"}},
        {"name": "gateway", "import_path": "deployments.app_builder:build_gateway", "route_prefix": "/"}]})
    apply_model(config, ModelChoice(None, "smollm2 could not be pulled"))
    assert config.applications[0].args == {"model_path": None, "model_note": "smollm2 could not be pulled"}
    apply_model(config, ModelChoice("/models/x"))
    assert config.applications[0].args == {"model_path": "/models/x"} and not config.applications[1].args
