"""Typed input of an export: what callers send, validated once at the edge.

The shapes keep the original Export IA names (``content{title, sections[]}``,
``format``, ``document_type``, ``quality_level``) so existing clients work;
``content`` may also be a Markdown string.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from business_modules.export import constants as C
from business_modules.export.kinds import DocumentType, ExportFormat, QualityLevel
from business_modules.export.themes import THEMES

# C0 controls (other than tab/newline/CR) and DEL are not valid in XML 1.0,
# so python-docx and python-pptx would raise on them; they carry no text.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _strip_controls(value: str) -> str:
    return _CONTROL_CHARS.sub("", value)


CleanStr = Annotated[str, AfterValidator(_strip_controls)]


_FORMAT_ALIASES = {"md": "markdown", "htm": "html", "word": "docx", "powerpoint": "pptx"}


class Section(BaseModel):
    """One section of a structured document: a heading, Markdown content and
    optional subsections (nested at most `constants.MAX_SECTION_DEPTH` deep)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    heading: CleanStr = Field(
        validation_alias=AliasChoices("heading", "title"), min_length=1, max_length=C.MAX_HEADING_CHARS
    )
    content: CleanStr | list[CleanStr] = Field("", description="Markdown; a list is joined as paragraphs.")
    subsections: list[Section] = Field(default_factory=list)

    @field_validator("heading")
    @classmethod
    def _heading_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("heading must not be blank")
        return value

    @property
    def markdown(self) -> str:
        if isinstance(self.content, list):
            return "\n\n".join(part.strip("\n") for part in self.content)
        return self.content


class StructuredContent(BaseModel):
    """``{title, sections[]}``: the original module's document shape."""

    model_config = ConfigDict(extra="forbid")

    title: CleanStr = Field(min_length=1, max_length=C.MAX_TITLE_CHARS)
    sections: list[Section] = Field(min_length=1, max_length=C.MAX_SECTIONS)

    @field_validator("title")
    @classmethod
    def _title_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("title must not be blank")
        return value

    @model_validator(mode="after")
    def _check_size(self) -> StructuredContent:
        count, chars, depth = _measure(self.sections, 1)
        if count > C.MAX_SECTIONS:
            raise ValueError(f"too many sections: {count} > {C.MAX_SECTIONS} (nested ones included)")
        if depth > C.MAX_SECTION_DEPTH:
            raise ValueError(f"sections nest {depth} deep; at most {C.MAX_SECTION_DEPTH} levels are allowed")
        if chars > C.MAX_CONTENT_CHARS:
            raise ValueError(f"content too long: {chars} > {C.MAX_CONTENT_CHARS} characters")
        return self


def _measure(sections: list[Section], depth: int) -> tuple[int, int, int]:
    count, chars, deepest = 0, 0, depth if sections else depth - 1
    for section in sections:
        sub_count, sub_chars, sub_depth = _measure(section.subsections, depth + 1)
        count += 1 + sub_count
        chars += len(section.heading) + len(section.markdown) + sub_chars
        deepest = max(deepest, sub_depth)
    return count, chars, deepest


class DocumentMetadata(BaseModel):
    """Metadata written into every format (PDF info, DOCX/PPTX core
    properties, HTML ``<meta>``). ``title`` defaults to the document's title."""

    model_config = ConfigDict(extra="forbid")

    title: CleanStr | None = Field(None, max_length=C.MAX_TITLE_CHARS)
    author: CleanStr | None = Field(None, max_length=C.MAX_AUTHOR_CHARS)
    subject: CleanStr | None = Field(None, max_length=C.MAX_SUBJECT_CHARS)
    keywords: list[Annotated[CleanStr, Field(max_length=C.MAX_KEYWORD_CHARS)]] = Field(
        default_factory=list, max_length=C.MAX_KEYWORDS
    )
    created: datetime | None = None
    language: str = Field("en", pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")

    @field_validator("keywords", mode="before")
    @classmethod
    def _split_keywords(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("keywords")
    @classmethod
    def _dedupe_keywords(cls, value: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for keyword in value:
            keyword = " ".join(keyword.replace(",", " ").split())
            if keyword:
                seen.setdefault(keyword, None)
        return list(seen)

    @field_validator("created")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "markdown"
    if isinstance(value, (dict, StructuredContent)):
        return "structured"
    return None


MarkdownContent = Annotated[str, StringConstraints(max_length=C.MAX_CONTENT_CHARS), AfterValidator(_strip_controls)]

Content = Annotated[
    Annotated[StructuredContent, Tag("structured")] | Annotated[MarkdownContent, Tag("markdown")],
    Discriminator(
        _content_kind,
        custom_error_type="content_type",
        custom_error_message="content must be a Markdown string or an object {title, sections[]}",
    ),
]


class ExportRequest(BaseModel):
    """One export: content plus how to render it.

    Unknown fields are refused here and in every nested model: a typo such as
    ``formatt`` was accepted and rendered the default PDF without a word.
    """

    model_config = ConfigDict(extra="forbid")

    content: Content
    format: ExportFormat = ExportFormat.PDF
    document_type: DocumentType = DocumentType.REPORT
    quality_level: QualityLevel = QualityLevel.PROFESSIONAL
    theme: str | None = Field(None, description="Theme name; default depends on quality_level.")
    title: CleanStr | None = Field(None, max_length=C.MAX_TITLE_CHARS, description="Title for Markdown content.")
    metadata: DocumentMetadata = Field(default_factory=DocumentMetadata)
    toc: bool | None = Field(None, description="Table of contents; default: on unless quality_level is draft.")
    page_numbers: bool = True
    filename: CleanStr | None = Field(None, max_length=C.MAX_FILENAME_CHARS, description="Download name, no extension.")

    @field_validator("format", mode="before")
    @classmethod
    def _format_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return _FORMAT_ALIASES.get(value, value)
        return value

    @field_validator("document_type", "quality_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("content")
    @classmethod
    def _content_not_blank(cls, value: StructuredContent | str) -> StructuredContent | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("content must not be empty")
        return value

    @field_validator("theme")
    @classmethod
    def _known_theme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().lower()
        if name not in THEMES:
            raise ValueError(f"unknown theme {value!r}; choose one of {sorted(THEMES)}")
        return name
