"""Validation of export requests: bad input is refused with a clear message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from business_modules.export import ExportFormat, ExportRequest
from business_modules.export import constants as C
from business_modules.export.source import build_source, safe_filename
from tests.business_modules.export_samples import CREATED, structured_payload


def errors(payload: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        ExportRequest.model_validate(payload)
    return info.value.errors()


@pytest.mark.parametrize(
    ("payload", "where", "kind"),
    [
        ({"content": "   "}, ("content",), "value_error"),
        ({"content": "x", "format": "odt"}, ("format",), "enum"),
        ({"content": "x", "theme": "neon"}, ("theme",), "value_error"),
        ({"content": 42}, ("content",), "content_type"),
        ({"content": {"title": "T", "sections": []}}, ("content", "structured", "sections"), "too_short"),
        ({"content": {"title": "T", "sections": [{"heading": 5}]}},
         ("content", "structured", "sections", 0, "heading"), "string_type"),
        ({"content": {"title": "  ", "sections": [{"heading": "h"}]}}, ("content", "structured", "title"),
         "value_error"),
        ({"content": "x" * (C.MAX_CONTENT_CHARS + 1)}, ("content", "markdown"), "string_too_long"),
        ({"content": "x", "metadata": {"keywords": ["k"] * (C.MAX_KEYWORDS + 1)}}, ("metadata", "keywords"),
         "too_long"),
        ({"content": "x", "metadata": {"language": "en_US<script>"}}, ("metadata", "language"),
         "string_pattern_mismatch"),
        ({"content": "x", "toc": "maybe"}, ("toc",), "bool_parsing"),
    ],
)
def test_bad_requests_are_refused(payload, where, kind):
    found = [(e["loc"], e["type"]) for e in errors(payload)]
    assert (where, kind) in found, found


def test_section_limits():
    many = [{"heading": f"s{i}"} for i in range(C.MAX_SECTIONS + 1)]
    assert any(e["type"] == "too_long" for e in errors({"content": {"title": "T", "sections": many}}))
    deep: dict = {"heading": "leaf"}
    for level in range(C.MAX_SECTION_DEPTH):
        deep = {"heading": f"level {level}", "subsections": [deep]}
    messages = [e["msg"] for e in errors({"content": {"title": "T", "sections": [deep]}})]
    assert any("nest" in m for m in messages)
    nested = [{"heading": "a", "subsections": [{"heading": f"b{i}"} for i in range(C.MAX_SECTIONS)]}]
    assert any("too many sections" in e["msg"] for e in errors({"content": {"title": "T", "sections": nested}}))


def test_aliases_defaults_and_cleaning():
    request = ExportRequest.model_validate(
        {"content": {"title": "T\x07itle", "sections": [{"title": "Alias heading", "content": "a\x00b"}]},
         "format": "MD", "metadata": {"keywords": "a, b, a"}}
    )
    assert request.format is ExportFormat.MARKDOWN
    assert request.content.title == "Title" and request.content.sections[0].heading == "Alias heading"
    assert request.content.sections[0].content == "ab"
    assert request.metadata.keywords == ["a", "b"]
    source = build_source(request, now=CREATED)
    assert source.options.toc and source.options.theme.name == "professional"
    assert source.metadata.created == CREATED and source.filename == "Title.md"


def test_filenames_are_safe():
    assert safe_filename("../../etc/passwd") == "etc-passwd"
    assert safe_filename('a<b>:"c"|?*') == "a-b-c"
    assert safe_filename("...") == "document"
    request = ExportRequest.model_validate(structured_payload(fmt="pdf", filename="Q1/report"))
    assert build_source(request, now=CREATED).filename == "Q1-report.pdf"
