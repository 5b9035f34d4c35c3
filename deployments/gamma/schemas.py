"""Response shapes of the gamma API (requests use `business_modules.gamma` models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ContentGenerated(BaseModel):
    """``POST /content/generate``: the original Gamma App answer."""

    content_id: str
    title: str
    content: str = Field(description="The result in the request's output_format (html, markdown or text).")
    quality_score: float
    suggestions: list[str]
    export_urls: dict[str, str]
    content_type: str
    status: str = "completed"


class GenerationAccepted(BaseModel):
    """``POST /generations``."""

    model_config = ConfigDict(populate_by_name=True)

    generation_id: str = Field(alias="generationId")
    status: str
    status_url: str = Field(alias="statusUrl")


class GenerationStatus(BaseModel):
    """``GET /generations/{id}``: Gamma's poll answer, with the cards and the HTML once completed."""

    model_config = ConfigDict(populate_by_name=True)

    generation_id: str = Field(alias="generationId")
    status: str = Field(description="queued, running, completed or failed")
    format: str
    text_mode: str = Field(alias="textMode")
    theme_id: str = Field(alias="themeId")
    title: str | None = None
    cards: list[dict[str, Any]] | None = None
    html: str | None = None
    export_url: str | None = Field(None, alias="exportUrl", description="The exportAs file, once completed.")
    export_urls: dict[str, str] = Field(default_factory=dict, alias="exportUrls")
    quality_score: float | None = Field(None, alias="qualityScore")
    quality: dict[str, Any] | None = None
    suggestions: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict, description="LLM calls and tokens (cached_tokens: KV hits).")
    error: str | None = None
    created_at: str = Field(alias="createdAt")
    finished_at: str | None = Field(None, alias="finishedAt")
