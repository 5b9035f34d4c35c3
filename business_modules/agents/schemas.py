"""JSON Schemas as the agents use them: checked, validated against, and measured.

Why measure: a tool call's arguments are generated under a grammar built
from the tool's schema, and the model call has a ``max_tokens``. A schema
whose longest valid JSON is bounded (every string has ``maxLength``, every
array ``maxItems``) lets the loop give each step enough tokens to finish any
call; an unbounded one would let a random-weight model write until the
budget cuts the arguments short. Capability outputs (the ``final_answer``
tool's arguments) must therefore be bounded; tool arguments are too, by
construction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel
from pydantic_core import SchemaValidator
from pydantic_core import ValidationError as CoreValidationError
from pydantic_core import core_schema

NUMBER_CHARS = 24
"""Characters assumed for a number without bounds (``-1.2345678901234567e+300`` is 24)."""

_MAX_ERRORS = 5
MAX_SCHEMA_DEPTH = 12
"""Nesting of a tenant's schema at most (a deeper one could exhaust the validator's recursion)."""


@functools.lru_cache(maxsize=512)
def _linear_regex(pattern: str) -> SchemaValidator:
    """A matcher for a JSON Schema ``pattern`` on Rust's regex engine, whose time is linear in the text: a
    tenant's pattern (``^(a+)+$``) cannot stall the replica the way Python's backtracking ``re`` would."""
    return SchemaValidator(core_schema.str_schema(pattern=pattern),
                           config=core_schema.CoreConfig(regex_engine="rust-regex"))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, "string"):
        return
    try:
        _linear_regex(pattern).validate_python(instance)
    except CoreValidationError:
        yield jsonschema.ValidationError(f"{instance[:80]!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _pattern})
"""Draft 2020-12 with ``pattern`` on the linear-time engine."""


def check_schema(schema: Any, *, what: str) -> None:
    """Raise ValueError when ``schema`` is not a JSON Schema (draft 2020-12) describing an object that the
    agents can use safely: local ``$ref`` only (nothing is fetched), no ``patternProperties``, patterns the
    linear-time engine compiles (no look-around or back-references), at most `MAX_SCHEMA_DEPTH` deep."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{what} must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"{what} is not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise ValueError(f"{what} must describe an object (\"type\": \"object\")")
    _check_node(schema, what=what, depth=0)


def _check_node(node: Any, *, what: str, depth: int) -> None:
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"{what} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(node, list):
        for item in node:
            _check_node(item, what=what, depth=depth + 1)
        return
    if not isinstance(node, Mapping):
        return
    for key in ("$ref", "$dynamicRef"):
        if key in node and not str(node[key]).startswith("#"):
            raise ValueError(f"{what}: only local references (\"#/$defs/...\") are allowed, not {node[key]!r}")
    if "patternProperties" in node:
        raise ValueError(f"{what}: patternProperties is not supported; name the properties")
    if isinstance(node.get("pattern"), str):
        try:
            _linear_regex(node["pattern"])
        except Exception as exc:  # noqa: BLE001 - pydantic-core's SchemaError; its first line says why
            raise ValueError(f"{what}: pattern {node['pattern']!r} is not supported (no look-around or "
                             f"back-references): {str(exc).splitlines()[-1][:120]}") from None
    for value in node.values():
        _check_node(value, what=what, depth=depth + 1)


def validation_errors(schema: Mapping[str, Any], value: Any) -> list[str]:
    """Why ``value`` does not validate against ``schema`` (empty when it does), as short ``path: message`` lines."""
    errors = sorted(Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    lines = []
    for error in errors[:_MAX_ERRORS]:
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message[:200]}")
    if len(errors) > _MAX_ERRORS:
        lines.append(f"(and {len(errors) - _MAX_ERRORS} more)")
    return lines


def json_size_bound(schema: Mapping[str, Any], defs: Mapping[str, Any] | None = None, depth: int = 0) -> int | None:
    """An upper bound of the characters of compact JSON valid against ``schema``; None when unbounded.

    Approximate where JSON escapes a character (counted as one): the bound is
    for budgeting tokens, not for a proof.
    """
    if depth > 32:
        return None
    defs = schema.get("$defs", defs) or {}
    if "$ref" in schema:
        ref = str(schema["$ref"])
        if not ref.startswith("#/$defs/") or ref[8:] not in defs:
            return None
        return json_size_bound(defs[ref[8:]], defs, depth + 1)
    if "const" in schema:
        return _literal_size(schema["const"])
    if "enum" in schema:
        return max((_literal_size(v) for v in schema["enum"]), default=None)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            sizes = [json_size_bound(s, defs, depth + 1) for s in schema[key]]
            return None if any(s is None for s in sizes) or not sizes else max(sizes)  # type: ignore[type-var]
    kind = schema.get("type")
    if isinstance(kind, list):
        sizes = [json_size_bound({**schema, "type": k}, defs, depth + 1) for k in kind]
        return None if any(s is None for s in sizes) or not sizes else max(sizes)  # type: ignore[type-var]
    if kind == "string":
        return None if "maxLength" not in schema else int(schema["maxLength"]) + 2
    if kind == "integer":
        if "minimum" in schema and "maximum" in schema:
            return max(len(str(int(schema["minimum"]))), len(str(int(schema["maximum"]))))
        return 20
    if kind == "number":
        return NUMBER_CHARS
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "array":
        return _array_bound(schema, defs, depth)
    if kind == "object":
        return _object_bound(schema, defs, depth)
    return None


def _array_bound(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> int | None:
    if "maxItems" not in schema:
        return None
    items = schema.get("items", {})
    item = json_size_bound(items, defs, depth + 1) if isinstance(items, Mapping) else None
    if item is None:
        return None
    count = int(schema["maxItems"])
    return 2 + count * item + max(0, count - 1)


def _object_bound(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> int | None:
    if schema.get("additionalProperties", True) is not False:
        return None  # any further key may be written
    total = 2
    properties = schema.get("properties", {})
    for name, sub in properties.items():
        size = json_size_bound(sub, defs, depth + 1)
        if size is None:
            return None
        total += len(name) + 3 + size + 1  # "name": value,
    return total


def _literal_size(value: Any) -> int:
    import json

    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a pydantic model as the model is shown it, compact (every character is a prompt
    token): no pydantic ``title`` keys (they repeat the property names), an optional field as its type
    alone (``anyOf [X, null]`` becomes X: leaving it out means None), closed to extra properties."""
    schema = _compact(model.model_json_schema())
    schema.setdefault("additionalProperties", False)
    return schema


def _compact(node: Any) -> Any:
    if isinstance(node, list):
        return [_compact(v) for v in node]
    if not isinstance(node, dict):
        return node
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        kept = next(o for o in options if o != {"type": "null"})
        rest = {k: v for k, v in node.items() if k != "anyOf" and not (k == "default" and v is None)}
        return _compact({**kept, **rest})
    return {k: _compact(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
