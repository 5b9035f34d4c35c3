"""Jump-forward decoding: tokens a grammar forces are appended without a decode step each.

The reference decodes the same tokens one step at a time (forced ones fed
with ``runner.step``), so equal greedy output proves the batch row's KV
from the one-forward extend is the KV the steps would have built.
"""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from cache_actors.engine.batching import SequenceRequest
from cache_actors.engine.model_runner import ModelRunner
from cache_actors.engine.sampling import SamplingParams
from cache_actors.engine.structured import RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS, TokenizerGrammar, compile_response_format
from cache_actors.engine.tool_calls import FunctionTool, parse_output, tool_call_format

TOOLS = [FunctionTool("get_weather", "", {"type": "object", "required": ["city", "days"], "additionalProperties": False,
                                          "properties": {"city": {"type": "string", "maxLength": 12},
                                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}}}),
         FunctionTool("lookup_customer_record", "", {"type": "object", "properties": {"id": {"type": "integer"}}})]
PROMPTS = ["What is the weather in Oslo?", "Find customer 42", "x"]


@pytest.fixture(scope="module")
def grammar(tiny_runner: ModelRunner) -> TokenizerGrammar:
    return TokenizerGrammar.from_tokenizer(tiny_runner.tokenizer, vocab_size=tiny_runner.vocab_size,
                                           eos_token_ids=tiny_runner.eos_token_ids,
                                           close_after_tokens=RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS)


def reference(runner: ModelRunner, grammar: TokenizerGrammar, prompt: str, fmt: dict, max_new: int) -> list[int]:
    """One token per model step; forced tokens taken in the same order the batcher takes them."""
    constraint = compile_response_format(fmt, grammar).new_constraint()
    logits, kv = runner.prefill(runner.encode(prompt))
    out: list[int] = []
    pending = []  # forced tokens still to append
    while len(out) < max_new:
        if pending:
            token = pending.pop(0)
        else:
            masked = logits.clone()
            constraint.mask_logits(masked)
            token = int(masked.argmax())
            if token in runner.eos_token_ids:
                break
        constraint.accept(token)
        out.append(token)
        if constraint.is_finished():
            break
        if not pending:
            pending = constraint.forced_tokens()
        logits = runner.step(token, kv)
    return out


def test_forced_tokens_skip_decode_steps_and_keep_greedy_output(batcher, make_engine, tiny_runner, grammar):
    def compile_format(fmt):
        spec = compile_response_format(fmt, grammar)
        return None if spec is None else spec.new_constraint

    engine = make_engine()
    b = batcher(engine, max_batch_size=4)
    b._compile_format = compile_format  # the server passes the same factory at construction
    fmt = tool_call_format(TOOLS, "required")
    plain = "The quarterly report shows that revenue grew"

    async def run():
        calls = [b.generate(SequenceRequest(token_ids=tiny_runner.encode(p), sampling=SamplingParams(max_new_tokens=160),
                                            response_format=fmt)) for p in PROMPTS]
        free = b.generate(SequenceRequest(token_ids=tiny_runner.encode(plain), sampling=SamplingParams(max_new_tokens=40)))
        return await asyncio.gather(*calls, free)

    *results, free = asyncio.run(run())
    for prompt, got in zip(PROMPTS, results):
        assert got["token_ids"] == reference(tiny_runner, grammar, prompt, fmt, 160)
        call = parse_output(got["text"]).calls[0]
        assert call.complete and got["finish_reason"] == "stop"
        jsonschema.validate(json.loads(call.arguments), next(t.parameters for t in TOOLS if t.name == call.name))
    solo = asyncio.run(b.generate(SequenceRequest(token_ids=tiny_runner.encode(plain),
                                                  sampling=SamplingParams(max_new_tokens=40))))
    assert free["token_ids"] == solo["token_ids"]  # a row beside the jumping ones is untouched
    tokens = sum(r["completion_tokens"] for r in results)
    assert b.jumped_tokens >= tokens // 2  # the call's frame and names are forced
    assert b.steps < 160, (b.steps, b.jumped_tokens, tokens)
