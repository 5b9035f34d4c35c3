"""The tool that exports a result as a file (the export service). It has side effects (a stored file), so it
waits for an approval, is never retried, and is never called twice for one call of the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents.ports import Services
from business_modules.agents.tools.base import Tool, ToolContext
from business_modules.export import ExportRequest


class ExportArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["pdf", "docx", "html", "markdown"]
    title: str = Field(min_length=1, max_length=80)
    content: str = Field(min_length=1, max_length=1000)


class ExportResult(Tool):
    name = "export_result"
    description = "Export Markdown content as a file; returns its download URL."
    args_model = ExportArgs
    service = "export"
    side_effects = True

    def available(self, services: Services, corpora: Sequence[str]) -> bool:
        return services.exports is not None

    async def run(self, args: ExportArgs, ctx: ToolContext) -> dict[str, Any]:
        assert ctx.services.exports is not None
        request = ExportRequest(content=args.content, format=args.format, title=args.title,
                                filename=args.title[:80])
        exported = await ctx.services.exports.export(tenant=ctx.tenant, request=request)
        return {"task_id": exported.task_id, "status": exported.status, "format": exported.format,
                "download_url": exported.download_url}
