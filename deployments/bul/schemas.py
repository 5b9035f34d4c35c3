"""Response shapes of the BUL API (requests use `business_modules.bul` models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DocumentTypeInfo(BaseModel):
    name: str
    title: str
    description: str
    sections: list[str]
    input_schema: dict[str, Any] = Field(description="JSON schema of `inputs` for this type.")


class TaskAccepted(BaseModel):
    """``POST /documents/generate`` and ``POST /query``: the task was stored and queued."""

    task_id: str
    document_id: str
    status: str
    document_type: str
    title: str
    estimated_time: int = Field(description="Rough seconds until completion.")
    status_url: str
    events_url: str
    document_url: str


class SectionProgress(BaseModel):
    step: str = Field(description="outline or section")
    index: int | None = None
    heading: str
    status: str = Field(description="pending, running or completed")
    prompt_tokens: int | None = None
    cached_tokens: int | None = Field(None, description="Prompt tokens served from the KV cache.")
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None


class TaskStatusOut(BaseModel):
    """``GET /tasks/{id}/status``."""

    task_id: str
    document_id: str
    kind: str = Field(description="generate, or regenerate (one section)")
    status: str = Field(description="queued, running, completed, failed or cancelled")
    progress: float = Field(description="Finished steps / all steps, 0-1.")
    steps_done: int
    steps_total: int
    sections: list[SectionProgress]
    error: str | None = None
    version: int | None = Field(None, description="The version this task stored, once completed.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    documents: list[str] = Field(default_factory=list, description="Document URLs once completed (original API).")


class SectionOut(BaseModel):
    heading: str
    body: str


class VersionOut(BaseModel):
    version: int
    task_id: str
    created_at: str
    sections: list[SectionOut]
    markdown: str


class DocumentOut(BaseModel):
    """``GET /documents/{id}``: every version, newest last."""

    document_id: str
    document_type: str
    title: str
    current_version: int
    outline: dict[str, str] | None
    created_at: str
    versions: list[VersionOut]
    tasks: list[str]
    download_urls: dict[str, str]
