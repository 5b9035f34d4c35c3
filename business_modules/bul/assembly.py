"""Prompts laid out for KV reuse, and the assembly of a document from its template.

Prompt layout (every call of one document shares its head, so every call
after the first is served from the KV cache up to its own ask):

1. system: the document type's fixed instructions (shared by every document
   of that type and tenant);
2. user: the request and the user's inputs, then (for sections) the outline,
   then the call's own ask, last.

Templates are rendered in a `SandboxedEnvironment` with `StrictUndefined`:
a template can read only what it is given, a missing name is an error, and
every value it prints is Markdown-escaped on the way out, so user text such
as ``{{ 7*7 }}`` or ``<script>`` stays literal text in every format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import DictLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from business_modules.bul.doctypes import FACTS_TEMPLATE, CommonInputs, DocumentTypeSpec
from business_modules.bul.models import GenerateRequest
from business_modules.llm_client import ChatMessage

_INLINE_SPECIALS = re.compile(r"([\\`*_\[\]<>|!&~])")
_LINE_START = re.compile(r"^(\s{0,3})(?:(>|[#+=-](?=\s|$|[#=-]))|(\d{1,9})([.)])(?=\s|$))", re.MULTILINE)


class MarkdownText(str):
    """Text already safe to place in Markdown (the escape on output leaves it as it is)."""


def escape_markdown(text: str) -> str:
    """Plain text as Markdown that renders as exactly that text.

    Backslash-escapes the inline punctuation that could start markup or HTML
    (``< & * _ [ ] ` | ! ~ \\``) and a block marker at a line start; digits,
    ``.``, ``,``, ``%``, ``$`` and braces stay as typed, so figures read the same in the
    Markdown file as in the rendered formats.
    """
    text = _INLINE_SPECIALS.sub(r"\\\1", text)
    return _LINE_START.sub(_escape_line_start, text)


def _escape_line_start(match: re.Match[str]) -> str:
    if match.group(2):  # a block marker: "#", ">", "-", "+", "="
        return f"{match.group(1)}\\{match.group(2)}"
    return f"{match.group(1)}{match.group(3)}\\{match.group(4)}"  # "1." -> "1\." (digits cannot be escaped)


def model_text(text: str) -> MarkdownText:
    """An LLM's section text as Markdown: paragraphs and emphasis kept; HTML, entities and headings made literal."""
    text = text.strip().replace("\r\n", "\n")
    text = text.replace("\\", "\\\\").replace("&", "\\&").replace("<", "\\<").replace("`", "\\`")
    text = re.sub(r"^(\s{0,3})(#)", r"\1\\\2", text, flags=re.MULTILINE)
    return MarkdownText(text)


def _finalize(value: Any) -> str:
    if isinstance(value, MarkdownText):
        return value
    return escape_markdown("" if value is None else str(value))


def _cell(value: Any) -> str:
    """A value for one table cell or list line: newlines become spaces."""
    return " ".join(str(value).split())


def _environment(spec: DocumentTypeSpec) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=DictLoader({"document": spec.template, "_facts": FACTS_TEMPLATE}),
        undefined=StrictUndefined,
        finalize=_finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["cell"] = _cell
    return env


_ENVIRONMENTS: dict[str, SandboxedEnvironment] = {}


def environment(spec: DocumentTypeSpec) -> SandboxedEnvironment:
    env = _ENVIRONMENTS.get(spec.name)
    if env is None:
        env = _ENVIRONMENTS[spec.name] = _environment(spec)
    return env


@dataclass(frozen=True, slots=True)
class SectionText:
    heading: str
    body: str
    """The LLM's raw text (escaped when the document is assembled)."""


_SENTENCE_END = re.compile(r"(?<=[^\s\d])[.!?](?:[\"')\]*_]*)(?=\s|$)|\n\s*\n")


def section_body(text: str, finish_reason: str) -> str:
    """The section's text, without a last sentence the token budget cut in the middle.

    A section that ran into ``max_tokens`` ends mid-word; a reader would
    rather lose that fragment than see it. The fragment is dropped only when
    the complete sentences before it keep at least half of the text, so a
    section that is one long sentence stays whole.
    """
    text = text.strip()
    if finish_reason != "length":
        return text
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] >= len(text) or ends[-1] < len(text) / 2:
        return text
    return text[: ends[-1]].rstrip()


def facts(inputs: CommonInputs) -> list[tuple[str, str]]:
    """The user's inputs as (label, value) rows, in schema order, exactly as given."""
    rows: list[tuple[str, str]] = []
    for name, field in type(inputs).model_fields.items():
        if name in ("notes", "figures"):
            continue
        value = getattr(inputs, name)
        if value in (None, "", []):
            continue
        label = field.title or name.replace("_", " ").capitalize()
        rows.append((label, ", ".join(value) if isinstance(value, list) else str(value)))
    rows.extend((figure.label, figure.value) for figure in inputs.figures)
    return rows


def render_markdown(spec: DocumentTypeSpec, *, title: str, inputs: CommonInputs,
                    sections: Sequence[SectionText]) -> str:
    """The whole document as Markdown (the type's template, sandboxed)."""
    template = environment(spec).get_template("document")
    text = template.render(
        title=title,
        inputs=inputs.model_dump(),
        facts=facts(inputs),
        sections=[{"heading": s.heading, "body": model_text(s.body)} for s in sections],
    )
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# --- prompts ----------------------------------------------------------------------------------


def _context(spec: DocumentTypeSpec, request: GenerateRequest, inputs: CommonInputs) -> str:
    """The shared head of every user message of one document: the request and the inputs."""
    lines = [f"Document: {spec.title}", f"Request: {request.query}"]
    if request.business_area:
        lines.append(f"Business area: {request.business_area}")
    lines.append(f"Tone: {request.tone}. Length: {request.length}. Language: {request.language}.")
    rows = facts(inputs)
    if rows:
        lines.append("Facts (already in the document, verbatim):")
        lines.extend(f"- {label}: {value}" for label, value in rows)
    if inputs.notes:
        lines.append(f"Notes: {inputs.notes}")
    return "\n".join(lines)


def outline_schema(spec: DocumentTypeSpec, note_chars: int) -> dict[str, Any]:
    """JSON schema of the outline: one short note per fixed section (bounded, so a small model stops)."""
    return {
        "type": "object",
        "properties": {s.key: {"type": "string", "maxLength": note_chars} for s in spec.sections},
        "required": [s.key for s in spec.sections],
        "additionalProperties": False,
    }


def outline_messages(spec: DocumentTypeSpec, request: GenerateRequest, inputs: CommonInputs) -> list[ChatMessage]:
    keys = ", ".join(f"{s.key} ({s.heading})" for s in spec.sections)
    return [
        {"role": "system", "content": spec.instructions},
        {"role": "user", "content": f"{_context(spec, request, inputs)}\n\nTask: outline the document as JSON: "
                                    f"one short note per section: {keys}."},
    ]


def outline_lines(spec: DocumentTypeSpec, outline: Mapping[str, str]) -> str:
    return "\n".join(f"{i}. {s.heading}: {outline.get(s.key, '')}" for i, s in enumerate(spec.sections, 1))


def section_messages(spec: DocumentTypeSpec, request: GenerateRequest, inputs: CommonInputs,
                     outline: Mapping[str, str], index: int, guidance: str | None = None) -> list[ChatMessage]:
    section = spec.sections[index]
    ask = f"Task: write section {index + 1}, \"{section.heading}\". {section.ask}"
    if guidance:
        ask += f" Guidance: {guidance}"
    return [
        {"role": "system", "content": spec.instructions},
        {"role": "user", "content": f"{_context(spec, request, inputs)}\n\nOutline:\n"
                                    f"{outline_lines(spec, outline)}\n\n{ask}"},
    ]


def parse_outline(spec: DocumentTypeSpec, text: str) -> dict[str, str]:
    """The outline notes; ValueError when the text is not the schema's JSON object."""
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(data.get(s.key), str) for s in spec.sections):
        raise ValueError("the outline lacks a note for some section")
    return {s.key: " ".join(data[s.key].split()) for s in spec.sections}
