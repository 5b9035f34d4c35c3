"""Structured output: OpenAI ``response_format`` enforced token by token.

The decode loop masks each step's logits with a grammar compiled from the
response format, so every sampled token keeps the output a valid prefix of JSON
that matches the schema, whatever the model's weights.

Why llguidance (PyPI ``llguidance``, the engine behind vLLM's and SGLang's
"guidance" backend): it computes each mask lazily, walking the token trie with
an Earley parser over a lexer, so there is no per-schema precomputation over the
whole vocabulary (compiling a schema takes about a millisecond); it reads a
Hugging Face fast tokenizer directly, byte-level (GPT-2 alphabet, as the demo
model's tokenizer) and byte-fallback (``<0x41>``) tokens included; and it covers most
of JSON Schema (refs, anyOf, patterns, lengths, enums, numeric bounds), while
saying clearly what it does not support, which becomes a 400 here.

Public interface (pure, no Ray): ``TokenizerGrammar`` once per model,
``compile_response_format`` per request (cached), ``GrammarSpec.new_constraint``
per sequence, and ``TokenConstraint.mask_logits / accept / is_finished`` per step.
"""

from cache_actors.engine.structured.constraint import GrammarSpec, TokenConstraint
from cache_actors.engine.structured.response_format import MAX_RESPONSE_FORMAT_BYTES, compile_response_format
from cache_actors.engine.structured.tokenizer_grammar import RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS, TokenizerGrammar

__all__ = [
    "MAX_RESPONSE_FORMAT_BYTES",
    "RANDOM_WEIGHTS_CLOSE_AFTER_TOKENS",
    "GrammarSpec",
    "TokenConstraint",
    "TokenizerGrammar",
    "compile_response_format",
]
