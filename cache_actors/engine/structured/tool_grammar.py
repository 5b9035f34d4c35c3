"""The grammar that makes a model's tool call valid: the call's frame fixed, its arguments per the tool's schema.

Compiled from the internal ``{"type": "tool_call", "mode", "tools"}`` format
(`cache_actors.engine.tool_calls.tool_call_format`) into llguidance's Lark
dialect, where ``%json {...}`` embeds a JSON Schema:

- ``required`` (or one named tool): the output is exactly one call;
- ``auto``: free text, or free text then one call. The call part is a lazy
  rule: once the text so far ends with ``<tool_call>``, what follows must be a
  valid call. A model that never writes the marker just answers in text.

The frame (``<tool_call>{"name":"...","arguments":`` ... ``}</tool_call>``) is
literal, so the parser in `cache_actors.engine.tool_calls` reads it back
without guessing; whitespace inside the arguments is not allowed, as in
``response_format`` (a random-weight model could emit it forever).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cache_actors.engine.tool_calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_NAME


def tool_call_grammar(spec: Mapping[str, Any]) -> str:
    """Lark text for a ``tool_call`` format; ValueError names what is malformed."""
    mode = spec.get("mode")
    if mode not in ("auto", "required"):
        raise ValueError(f"tool_call format: mode must be 'auto' or 'required', got {mode!r}")
    tools = spec.get("tools")
    if not isinstance(tools, list) or not tools:
        raise ValueError("tool_call format: 'tools' must be a non-empty list")
    alternatives = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            raise ValueError(f"tool_call format: tools[{i}] needs a name of 1-64 characters of a-z, A-Z, 0-9, _ or -")
        parameters = tool.get("parameters", {"type": "object"})
        if not isinstance(parameters, Mapping):
            raise ValueError(f"tool_call format: the parameters of {tool['name']!r} must be a JSON Schema object")
        alternatives.append(_call_rule(tool["name"], parameters))
    calls = "call: " + "\n    | ".join(alternatives)
    frame = f'{_literal(TOOL_CALL_OPEN)} call {_literal(TOOL_CALL_CLOSE)}'
    if mode == "required":
        return f"%llguidance {{}}\nstart: {frame}\n{calls}\n"
    return ("%llguidance {}\n"
            "start: TEXT | head call " + _literal(TOOL_CALL_CLOSE) + "\n"
            "head[lazy]: TEXT " + _literal(TOOL_CALL_OPEN) + "\n"
            f"{calls}\n"
            "TEXT: /(.|\\n)*/\n")


def _call_rule(name: str, parameters: Mapping[str, Any]) -> str:
    schema = dict(parameters)
    # Ours wins over a client's: whitespace between JSON tokens could run on forever.
    schema["x-guidance"] = {**dict(schema.get("x-guidance") or {}), "whitespace_flexible": False}
    head = _literal(f'{{"name":"{name}","arguments":')
    return f"{head} %json {json.dumps(schema, separators=(',', ':'), allow_nan=False)} {_literal('}')}"


def _literal(text: str) -> str:
    return json.dumps(text)
