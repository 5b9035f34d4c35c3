"""The tool that writes a business document with BUL. It has side effects (a stored document), so it waits
for an approval, is never retried, and is never called twice for one call of the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents.ports import Services
from business_modules.agents.tools.base import Tool, ToolContext
from business_modules.bul import DOCUMENT_TYPES, GenerateRequest

EXCERPT_CHARS = 600
WAIT_MARGIN_S = 5.0
"""Seconds of the call's bound kept for answering after waiting on the generation."""

DocumentType = Literal[tuple(t.name for t in DOCUMENT_TYPES)]  # type: ignore[valid-type]


class WriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_type: DocumentType  # type: ignore[valid-type]
    query: str = Field(min_length=1, max_length=300)
    title: str | None = Field(None, min_length=1, max_length=80)
    length: Literal["short", "medium", "long"] = "short"


class WriteDocument(Tool):
    name = "write_document"
    description = "Write and store a business document about query; returns its id and an excerpt."
    args_model = WriteArgs
    service = "bul"
    side_effects = True
    long_running = True

    def available(self, services: Services, corpora: Sequence[str]) -> bool:
        return services.documents is not None

    async def run(self, args: WriteArgs, ctx: ToolContext) -> dict[str, Any]:
        assert ctx.services.documents is not None
        request = GenerateRequest(query=args.query, document_type=args.document_type, title=args.title,
                                  length=args.length)
        written = await ctx.services.documents.write(tenant=ctx.tenant, request=request,
                                                     wait_s=max(1.0, ctx.timeout_s - WAIT_MARGIN_S))
        out: dict[str, Any] = {"task_id": written.task_id, "document_id": written.document_id,
                               "status": written.status, "title": written.title}
        if written.document_url:
            out["document_url"] = written.document_url
        if written.markdown:
            out["excerpt"] = written.markdown[:EXCERPT_CHARS]
        if written.error:
            out["error"] = written.error
        return out
