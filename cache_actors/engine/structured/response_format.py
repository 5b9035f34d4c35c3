"""OpenAI's ``response_format`` parameter, checked and compiled to a grammar.

Accepted shapes (as in OpenAI's chat completions API):

- ``{"type": "text"}`` or no response_format: free text, no constraint;
- ``{"type": "json_object"}``: any JSON object (top-level ``{...}``);
- ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...},
  "description": ..., "strict": ...}}``: JSON that validates against ``schema``
  (no schema means any JSON value). ``strict`` is accepted and changes nothing:
  every schema is enforced token by token here.

Everything else is a ``ValueError`` that names the problem (an HTTP 400 upstream).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from cache_actors.engine.structured.constraint import GrammarSpec
from cache_actors.engine.structured.tokenizer_grammar import TokenizerGrammar
from cache_actors.engine.structured.tool_grammar import tool_call_grammar
from cache_actors.engine.tool_calls import TOOL_CALL_FORMAT

#: A larger response_format is refused before compiling (a guard on compile time and memory).
MAX_RESPONSE_FORMAT_BYTES = 64 * 1024

_TYPES = ("text", "json_object", "json_schema")
_JSON_SCHEMA_KEYS = frozenset({"name", "description", "schema", "strict"})
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def compile_response_format(response_format: Mapping[str, Any] | None, grammar: TokenizerGrammar) -> GrammarSpec | None:
    """The grammar for ``response_format``, or None when the output is free text.

    Compiled specs are cached on ``grammar`` (LRU keyed by the canonical JSON of
    ``response_format``), so a schema that many requests share compiles once.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise ValueError(f"response_format must be an object, got {type(response_format).__name__}")
    key = _canonical(response_format)
    cached = grammar.cached_spec(key)
    if cached is not None:
        return cached
    kind = response_format.get("type")
    if kind == TOOL_CALL_FORMAT:  # internal: built by the ingress from `tools` (never accepted from a client there)
        _only_keys(response_format, {"type", "mode", "tools"}, "tool_call format")
        spec = GrammarSpec.compile_lark(tool_call_grammar(response_format), grammar, description="tool_call")
        grammar.store_spec(key, spec)
        return spec
    if kind not in _TYPES:
        raise ValueError(f"response_format.type must be one of {', '.join(_TYPES)}; got {kind!r}")
    if kind == "json_schema":
        _only_keys(response_format, {"type", "json_schema"}, "response_format")
        schema, description = _json_schema(response_format.get("json_schema"))
    else:
        _only_keys(response_format, {"type"}, "response_format")
        if kind == "text":
            return None
        schema, description = {"type": "object"}, "json_object"
    spec = GrammarSpec.compile(schema, grammar, description=description)
    grammar.store_spec(key, spec)
    return spec


def _json_schema(body: Any) -> tuple[dict, str]:
    """The schema and a name for logs, from ``response_format.json_schema``."""
    if not isinstance(body, Mapping):
        raise ValueError("response_format.json_schema must be an object with a name and a schema")
    _only_keys(body, _JSON_SCHEMA_KEYS, "response_format.json_schema")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -")
    if "description" in body and not isinstance(body["description"], str):
        raise ValueError("response_format.json_schema.description must be a string")
    if body.get("strict") is not None and not isinstance(body["strict"], bool):
        raise ValueError("response_format.json_schema.strict must be a boolean")
    schema = body.get("schema", {})
    if not isinstance(schema, Mapping):
        raise ValueError(f"response_format.json_schema.schema must be a JSON object, got {type(schema).__name__}")
    return dict(schema), name


def _only_keys(body: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in body if key not in allowed)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _canonical(response_format: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(response_format, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"response_format must be plain JSON: {exc}") from exc
    size = len(text.encode("utf-8"))
    if size > MAX_RESPONSE_FORMAT_BYTES:
        raise ValueError(f"response_format is {size} bytes of JSON; the limit is {MAX_RESPONSE_FORMAT_BYTES}")
    return text
