"""Typed input of BUL requests and the closed sets of its tasks."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from business_modules.bul import constants as C

Tone = Literal["professional", "friendly", "formal", "persuasive", "neutral"]
Length = Literal["short", "medium", "long"]


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskKind(str, enum.Enum):
    GENERATE = "generate"
    REGENERATE = "regenerate"


class GenerateRequest(BaseModel):
    """``POST /documents/generate`` (and the original ``POST /query``, which sends only query/priority/area)."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=C.MAX_QUERY_CHARS, description="What the document is about.")
    business_area: str | None = Field(None, max_length=C.MAX_FIELD_CHARS)
    document_type: str | None = Field(None, max_length=64, description="A name from GET /document-types; "
                                                                         "inferred from the query when absent.")
    inputs: dict[str, Any] | None = Field(None, description="Fields of the document type's input schema.")
    title: str | None = Field(None, min_length=1, max_length=C.MAX_TITLE_CHARS)
    tone: Tone = "professional"
    length: Length = "medium"
    language: str = Field("en", pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    priority: int = Field(1, ge=1, le=5)


class RegenerateRequest(BaseModel):
    """``POST /documents/{id}/sections/{index}/regenerate``."""

    model_config = ConfigDict(extra="forbid")

    guidance: str | None = Field(None, max_length=C.MAX_GUIDANCE_CHARS, description="Added to the section's ask.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed (default: the new version).")
