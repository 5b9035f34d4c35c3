"""The closed sets of an export: formats, document types, quality levels, job states.

Apart from the request models so that themes (which map quality levels to
themes) and the models (which check theme names) each import this, not each other.
"""

from __future__ import annotations

import enum


class ExportFormat(str, enum.Enum):
    """Output formats; the value is also the API name."""

    PDF = "pdf"
    DOCX = "docx"
    PPTX = "pptx"
    HTML = "html"
    MARKDOWN = "markdown"

    @property
    def extension(self) -> str:
        return "md" if self is ExportFormat.MARKDOWN else self.value

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    ExportFormat.PDF: "application/pdf",
    ExportFormat.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ExportFormat.PPTX: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ExportFormat.HTML: "text/html; charset=utf-8",
    ExportFormat.MARKDOWN: "text/markdown; charset=utf-8",
}

class DocumentType(str, enum.Enum):
    """Kind of document; recorded as the category in the file's metadata."""

    REPORT = "report"
    PROPOSAL = "proposal"
    MANUAL = "manual"
    PRESENTATION = "presentation"
    LETTER = "letter"
    MEMO = "memo"
    ARTICLE = "article"
    NEWSLETTER = "newsletter"
    OTHER = "other"


class QualityLevel(str, enum.Enum):
    """Finish of the output. ``draft`` leaves out the table of contents and
    marks pages as a draft; the others differ only in the default theme."""

    DRAFT = "draft"
    STANDARD = "standard"
    PROFESSIONAL = "professional"
    PREMIUM = "premium"
    ENTERPRISE = "enterprise"


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)
