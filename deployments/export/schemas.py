"""Response shapes of the export API (requests use `business_modules.export.ExportRequest`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ExportAccepted(BaseModel):
    """``POST /``: the job was stored and queued."""

    task_id: str
    status: str
    message: str
    format: str
    document_type: str
    quality_level: str
    title: str
    quality_score: float | None = Field(None, description="Known once the job has completed.")
    status_url: str
    download_url: str


class ExportStatus(BaseModel):
    """``GET /{task_id}/status``."""

    task_id: str
    status: str = Field(description="queued, running, completed or failed")
    format: str
    document_type: str
    quality_level: str
    title: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = None
    error: str | None = None
    quality_score: float | None = None
    quality_issues: list[str] = Field(default_factory=list)
    filename: str | None = None
    size_bytes: int | None = None
    download_url: str | None = Field(None, description="Set once the job has completed.")


class FormatInfo(BaseModel):
    format: str
    extension: str
    media_type: str


class ThemeInfo(BaseModel):
    name: str
    primary: str
    accent: str
    text: str
    body_font: str
    heading_font: str


class ValidationReport(BaseModel):
    """``POST /validate``: what an export of this content would contain."""

    valid: bool
    title: str
    sections: list[str]
    filename: str
    theme: str
    table_of_contents: bool
    quality_score: float
    quality_issues: list[str]
