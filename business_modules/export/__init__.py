"""Export: Markdown or ``{title, sections[]}`` content to PDF, DOCX, PPTX, HTML or Markdown.

Pure Python (no Ray). One markdown-it-py token stream drives every format;
themes, a table of contents, page numbers and document metadata are applied
the same way in each. `ExportService` runs export jobs in the background over
the storage `Database` and an on-disk `ResultStore`.

    from business_modules.export import ExportRequest, render_document
    doc = render_document(ExportRequest.model_validate(payload), now=datetime.now(timezone.utc))
"""

from business_modules.export.config import ExportSettings
from business_modules.export.errors import (
    ContentTooLargeError,
    ExportBusyError,
    ExportError,
    InvalidContentError,
    JobFailedError,
    JobNotFoundError,
    JobNotReadyError,
    RenderError,
    RenderTimeoutError,
    ResultGoneError,
)
from business_modules.export.kinds import DocumentType, ExportFormat, JobStatus, QualityLevel
from business_modules.export.models import DocumentMetadata, ExportRequest, Section, StructuredContent
from business_modules.export.renderer import DocumentPreview, RenderedDocument, preview_document, render_document
from business_modules.export.repository import ExportJob
from business_modules.export.results import ResultStore
from business_modules.export.service import ExportService, ResultFile
from business_modules.export.themes import THEMES, Theme, get_theme

__all__ = [
    "THEMES",
    "ContentTooLargeError",
    "DocumentMetadata",
    "DocumentPreview",
    "DocumentType",
    "ExportBusyError",
    "ExportError",
    "ExportFormat",
    "ExportJob",
    "ExportRequest",
    "ExportService",
    "ExportSettings",
    "InvalidContentError",
    "JobFailedError",
    "JobNotFoundError",
    "JobNotReadyError",
    "JobStatus",
    "QualityLevel",
    "RenderError",
    "RenderTimeoutError",
    "RenderedDocument",
    "ResultFile",
    "ResultGoneError",
    "ResultStore",
    "Section",
    "StructuredContent",
    "Theme",
    "get_theme",
    "preview_document",
    "render_document",
]
