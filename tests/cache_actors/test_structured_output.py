"""Structured output on the demo model: constrained decoding yields JSON that validates."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.structured import (
    RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS,
    GrammarSpec,
    TokenConstraint,
    TokenizerGrammar,
    compile_response_format,
)
from cache_actors.engine.structured import tokenizer_grammar

MAX_TOKENS = 200

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "color", "tags", "address"],
    "additionalProperties": False,
}
PATTERNED = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "nick": {"type": "string", "minLength": 3, "maxLength": 8},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
    },
    "required": ["code", "nick", "score", "items"],
}
TREE = {
    "$ref": "#/$defs/node",
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["value", "children"],
        }
    },
}


def json_schema_format(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


@pytest.fixture(scope="module")
def grammar(tiny_runner: ModelRunner) -> TokenizerGrammar:
    return TokenizerGrammar.from_tokenizer(
        tiny_runner.tokenizer,
        vocab_size=tiny_runner.vocab_size,
        eos_token_ids=tiny_runner.eos_token_ids,
        close_after_tokens=RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS,
    )


def constrained_decode(runner: ModelRunner, spec: GrammarSpec, *, temperature: float, seed: int = 0) -> tuple[str, str]:
    """The decode loop the batcher runs, for one sequence: (text, finish_reason)."""
    constraint = spec.new_constraint()
    generator = torch.Generator().manual_seed(seed)
    logits, cache = runner.prefill(runner.encode("Reply in JSON."))
    out: list[int] = []
    while len(out) < MAX_TOKENS:
        constraint.mask_logits(logits)
        if temperature == 0.0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=generator))
        constraint.accept(token)
        if token in runner.eos_token_ids:
            return runner.decode(out), "stop"
        out.append(token)
        if constraint.is_finished():
            return runner.decode(out), "stop"
        logits = runner.step(token, cache)
    return runner.decode(out), "length"


def feed(constraint: TokenConstraint, runner: ModelRunner, text: str) -> None:
    for token in runner.tokenizer.encode(text, add_special_tokens=False):
        constraint.accept(token)


# --- the demo model's output validates ------------------------------------------------------
@pytest.mark.parametrize("mode", [(0.0, 0), (1.0, 1), (1.0, 2)], ids=["greedy", "sampled-1", "sampled-2"])
def test_json_object_output_is_a_json_object(tiny_runner: ModelRunner, grammar: TokenizerGrammar, mode) -> None:
    spec = compile_response_format({"type": "json_object"}, grammar)
    text, finish = constrained_decode(tiny_runner, spec, temperature=mode[0], seed=mode[1])
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema", [PERSON, PATTERNED, TREE], ids=["person", "patterned", "recursive"])
@pytest.mark.parametrize("mode", [(0.0, 0), (1.0, 1), (1.0, 2)], ids=["greedy", "sampled-1", "sampled-2"])
def test_schema_output_validates(tiny_runner: ModelRunner, grammar: TokenizerGrammar, schema, mode) -> None:
    spec = compile_response_format(json_schema_format(schema, strict=True), grammar)
    text, finish = constrained_decode(tiny_runner, spec, temperature=mode[0], seed=mode[1])
    assert finish == "stop", f"did not finish in {MAX_TOKENS} tokens: {text!r}"
    jsonschema.validate(json.loads(text), schema)


def test_steering_only_narrows_the_grammar_mask(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    """Past close_after_tokens the mask is a non-empty subset of what the grammar allows."""
    free = TokenizerGrammar.from_tokenizer(
        tiny_runner.tokenizer, vocab_size=tiny_runner.vocab_size, eos_token_ids=tiny_runner.eos_token_ids
    )
    steered = compile_response_format(json_schema_format(PERSON), grammar).new_constraint()
    unsteered = compile_response_format(json_schema_format(PERSON), free).new_constraint()
    generator = torch.Generator().manual_seed(3)
    narrowed = 0
    while not steered.is_finished():
        allowed, grammar_allowed = steered.allowed_mask(), unsteered.allowed_mask()
        assert allowed.any() and not (allowed & ~grammar_allowed).any()
        narrowed += int(allowed.sum() < grammar_allowed.sum())
        token = int(torch.multinomial(allowed.float(), 1, generator=generator))
        steered.accept(token)
        unsteered.accept(token)
    assert steered.num_tokens >= RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS and narrowed > 0
    assert unsteered.is_finished()


# --- refused formats -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ("json", "must be an object"),
        ({"type": "xml"}, "must be one of"),
        ({}, "must be one of"),
        ({"type": "json_object", "schema": {}}, "unknown field"),
        ({"type": "json_schema"}, "json_schema must be an object"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "name"),
        (json_schema_format([1, 2]), "must be a JSON object"),
        (json_schema_format("object"), "must be a JSON object"),
        (json_schema_format({"type": "object"}, strict="yes"), "strict"),
        (json_schema_format({"type": "foo"}), "Invalid type"),
        (json_schema_format({"type": "object", "properties": 5}), "properties must be an object"),
        (json_schema_format({"type": "string", "minLength": 5, "maxLength": 2}), "Unsatisfiable"),
        (json_schema_format({"$ref": "#/$defs/missing"}), "does not exist"),
        (json_schema_format({"not": {"type": "string"}}), "Unimplemented"),
        (json_schema_format({"type": "string", "pattern": "(?<=a)b"}), "look-around"),
        (json_schema_format({"type": "number", "minimum": float("nan")}), "plain JSON"),
    ],
)
def test_malformed_or_unsupported_formats_raise_value_error(grammar: TokenizerGrammar, response_format, message) -> None:
    with pytest.raises(ValueError, match=message):
        compile_response_format(response_format, grammar)


def test_text_and_none_mean_no_constraint(grammar: TokenizerGrammar) -> None:
    assert compile_response_format(None, grammar) is None
    assert compile_response_format({"type": "text"}, grammar) is None


def test_compiled_specs_are_cached_by_canonical_json(grammar: TokenizerGrammar, monkeypatch) -> None:
    first = compile_response_format(json_schema_format({"type": "object", "required": ["a", "b"]}), grammar)
    reordered = {"json_schema": {"schema": {"required": ["a", "b"], "type": "object"}, "name": "answer"}, "type": "json_schema"}
    assert compile_response_format(reordered, grammar) is first
    monkeypatch.setattr(tokenizer_grammar, "SPEC_CACHE_ENTRIES", 4)
    for length in range(1, 8):
        compile_response_format(json_schema_format({"type": "string", "maxLength": length}), grammar)
    assert grammar.cached_spec_count() == 4
    assert compile_response_format(reordered, grammar) is not first  # evicted, compiled again


# --- accept / is_finished / mask semantics ---------------------------------------------------
def test_accept_refuses_a_disallowed_token_and_keeps_its_state(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    constraint = compile_response_format({"type": "json_object"}, grammar).new_constraint()
    for bad in (tiny_runner.tokenizer.encode("[", add_special_tokens=False)[0], tiny_runner.eos_token_ids[0], -1, grammar.vocab_size):
        with pytest.raises(ValueError):
            constraint.accept(bad)
    feed(constraint, tiny_runner, '{"a":1}')  # still at the start: a valid object goes through
    assert constraint.is_finished()


def test_finished_grammar_allows_only_eos(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    constraint = compile_response_format({"type": "json_object"}, grammar).new_constraint()
    feed(constraint, tiny_runner, '{"a":[1,"x"]')
    assert not constraint.is_finished() and not constraint.allows_eos()
    feed(constraint, tiny_runner, "}")
    assert constraint.is_finished() and constraint.allows_eos()
    assert constraint.allowed_mask().nonzero().flatten().tolist() == sorted(tiny_runner.eos_token_ids)
    logits = torch.zeros(grammar.vocab_size)
    constraint.mask_logits(logits)
    assert torch.isfinite(logits).nonzero().flatten().tolist() == sorted(tiny_runner.eos_token_ids)
    with pytest.raises(ValueError):
        feed(constraint, tiny_runner, " ")
    constraint.accept(tiny_runner.eos_token_ids[0])
    assert constraint.is_finished()
    with pytest.raises(ValueError, match="already ended"):
        constraint.accept(tiny_runner.eos_token_ids[0])


def test_eos_is_allowed_where_the_output_may_end_but_could_go_on(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    constraint = compile_response_format(json_schema_format({"type": "integer"}), grammar).new_constraint()
    feed(constraint, tiny_runner, "12")
    assert constraint.allows_eos() and not constraint.is_finished()
    digit = tiny_runner.tokenizer.encode("3", add_special_tokens=False)[0]
    assert constraint.allowed_mask()[digit]
    constraint.accept(tiny_runner.eos_token_ids[0])
    assert constraint.is_finished()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mask_on_logits_wider_than_the_tokenizer(tiny_runner: ModelRunner, grammar: TokenizerGrammar, dtype) -> None:
    """Ids past the tokenizer (up to vocab_size) and past vocab_size are never allowed."""
    assert grammar.vocab_size > len(tiny_runner.tokenizer)
    constraint = compile_response_format({"type": "json_object"}, grammar).new_constraint()
    logits = torch.zeros(2, grammar.vocab_size + 37, dtype=dtype)
    constraint.mask_logits(logits)
    brace = tiny_runner.tokenizer.encode("{", add_special_tokens=False)[0]
    for row in logits:
        assert torch.isfinite(row).nonzero().flatten().tolist() == [brace]
    assert torch.isneginf(logits[:, len(tiny_runner.tokenizer):]).all()
    with pytest.raises(ValueError, match="fewer than"):
        constraint.mask_logits(torch.zeros(grammar.vocab_size - 1))


def test_inference_mode_logits_can_be_masked(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    logits, _ = tiny_runner.prefill(tiny_runner.encode("hi"))
    assert logits.is_inference()
    compile_response_format({"type": "json_object"}, grammar).new_constraint().mask_logits(logits)
    assert torch.isfinite(logits).sum() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mask_on_cuda_logits(tiny_runner: ModelRunner, grammar: TokenizerGrammar) -> None:
    constraint = compile_response_format({"type": "json_object"}, grammar).new_constraint()
    logits = torch.zeros(grammar.vocab_size, dtype=torch.bfloat16, device="cuda")
    constraint.mask_logits(logits)
    assert torch.isfinite(logits).nonzero().flatten().cpu().tolist() == constraint.allowed_mask().nonzero().flatten().tolist()


# --- construction ------------------------------------------------------------------------------
def test_byte_fallback_tokenizer_is_supported() -> None:
    """``<0xNN>`` tokens (Llama/Mistral style byte fallback) map to their bytes."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>", fuse_unk=False))
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    grammar = TokenizerGrammar.from_tokenizer(tokenizer, vocab_size=320, eos_token_ids=[2])
    constraint = compile_response_format(json_schema_format({"enum": ["é1"]}), grammar).new_constraint()
    assert constraint.allowed_mask().nonzero().flatten().tolist() == [3 + ord('"')]
    for token in tokenizer.encode('"é1"', add_special_tokens=False):
        constraint.accept(token)
    assert constraint.is_finished()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0, "eos_token_ids": [2]}, "vocab_size"),
        ({"vocab_size": 512, "eos_token_ids": []}, "EOS"),
        ({"vocab_size": 512, "eos_token_ids": [600]}, "EOS"),
        ({"vocab_size": 512, "eos_token_ids": [2], "close_after_tokens": -1}, "close_after_tokens"),
    ],
)
def test_bad_tokenizer_grammar_arguments(tiny_runner: ModelRunner, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TokenizerGrammar.from_tokenizer(tiny_runner.tokenizer, **kwargs)
