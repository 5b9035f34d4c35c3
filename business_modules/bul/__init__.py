"""BUL: business documents written by the LLM (plain Python, no Ray).

Document types are data (`doctypes`): fixed instructions, sections, a typed
input schema and a sandboxed Jinja2 template that places the user's names
and figures verbatim. `BulService` runs jobs (outline as schema-valid JSON,
then each section) over the storage `Database` and an `LLMClient`, keeps
every version, and renders downloads with the Export module's renderers.
"""

from business_modules.bul.config import BulSettings
from business_modules.bul.doctypes import DOCUMENT_TYPES, DocumentTypeSpec, get_document_type, infer_document_type
from business_modules.bul.errors import (
    BulBusyError,
    BulError,
    DocumentNotFoundError,
    DocumentNotReadyError,
    InputTooLargeError,
    InvalidRequestError,
    OutlineError,
    RenderFailedError,
    TaskFinishedError,
    TaskNotFoundError,
    UnknownDocumentTypeError,
)
from business_modules.bul.models import GenerateRequest, RegenerateRequest, TaskKind, TaskStatus
from business_modules.bul.repository import Document, Task, Version
from business_modules.bul.service import EXPORT_FORMATS, BulService

__all__ = [
    "DOCUMENT_TYPES",
    "EXPORT_FORMATS",
    "BulBusyError",
    "BulError",
    "BulService",
    "BulSettings",
    "Document",
    "DocumentNotFoundError",
    "DocumentNotReadyError",
    "DocumentTypeSpec",
    "GenerateRequest",
    "InputTooLargeError",
    "InvalidRequestError",
    "OutlineError",
    "RegenerateRequest",
    "RenderFailedError",
    "Task",
    "TaskFinishedError",
    "TaskKind",
    "TaskNotFoundError",
    "TaskStatus",
    "UnknownDocumentTypeError",
    "Version",
    "get_document_type",
    "infer_document_type",
]
