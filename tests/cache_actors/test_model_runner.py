"""Demo model, tokenizer, HF-folder loading and sampling."""

from __future__ import annotations

import pytest
import torch

from cache_actors.engine.demo_model import TINY_SPEC, build_demo_tokenizer, export_demo_model
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.sampling import SamplingParams, find_stop, make_generator, sample_next


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = build_demo_tokenizer()
    text = "Café – 東京 – Ünïcödé 🚀 \n\t end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_demo_model_is_deterministic_across_builds(tiny_runner):
    again = ModelRunner.load(None, demo_spec=TINY_SPEC)
    ids = tiny_runner.encode("determinism")
    a, _ = tiny_runner.prefill(ids)
    b, _ = again.prefill(ids)
    assert torch.equal(a, b) and tiny_runner.model_id == again.model_id


def test_exported_demo_model_loads_as_a_hugging_face_folder(tiny_runner, tmp_path):
    folder = export_demo_model(tmp_path / "demo", TINY_SPEC)
    loaded = ModelRunner.load(str(folder))
    text = "Same weights, same tokens."
    assert loaded.encode(text) == tiny_runner.encode(text)
    a, _ = loaded.prefill(loaded.encode(text))
    b, _ = tiny_runner.prefill(tiny_runner.encode(text))
    torch.testing.assert_close(a, b)
    assert loaded.geometry == tiny_runner.geometry and loaded.supports_prefix_reuse


def test_model_path_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        ModelRunner.load(str(tmp_path))


def test_chat_template_of_the_demo_model(tiny_runner):
    ids = tiny_runner.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert ids[0] == 1 and tiny_runner.decode(ids) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([10.0, 9.0, -10.0, -10.0])
    params = SamplingParams(temperature=1.0, top_p=0.5, seed=0)
    generator = make_generator(params)
    assert {sample_next(logits, params, generator) for _ in range(50)} == {0}
    wide = SamplingParams(temperature=1.0, top_p=1.0, seed=0)
    generator = make_generator(wide)
    assert {sample_next(logits, wide, generator) for _ in range(200)} == {0, 1}


def test_greedy_and_stop_helpers():
    assert sample_next(torch.tensor([0.1, 3.0, 2.0]), SamplingParams(), None) == 1
    assert find_stop("hello world", ("wor", "lo")) == 3
    assert find_stop("hello", ("x",)) is None


def test_end_tokens_come_from_config_generation_config_and_tokenizer(tmp_path):
    """A chat checkpoint ends its turn with a token only generation_config.json names: stop on it too."""
    import json

    from cache_actors.engine.model_runner import end_token_ids

    folder = export_demo_model(tmp_path / "demo", TINY_SPEC)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    runner = ModelRunner.load(str(folder))
    assert set(runner.eos_token_ids) == {2, 7}
    assert end_token_ids(runner.model, runner.tokenizer)[0] == runner.model.config.eos_token_id


def test_auto_dtype_is_bf16_only_where_the_cpu_runs_it_fast():
    from cache_actors.engine.model_runner import cpu_has_amx, resolve_dtype

    assert resolve_dtype("auto") == (torch.bfloat16 if cpu_has_amx() else torch.float32)
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype("float32") == torch.float32
    runner = ModelRunner.load(None, demo_spec=TINY_SPEC, dtype="auto")
    assert runner.geometry.dtype == resolve_dtype("auto")
