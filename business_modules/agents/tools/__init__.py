"""The tools agents may use, by name, and the ``final_answer`` tool that ends a run.

A capability lists the tools it may use (`TOOLS` names); every run is also
offered ``final_answer``, whose arguments are the capability's output
schema: the model ends the run by calling it, under the same grammar as any
other call, so the result always validates.
"""

from __future__ import annotations

from business_modules.agents.tools.arithmetic import Calculate
from business_modules.agents.tools.base import Tool, ToolContext
from business_modules.agents.tools.calendar import Dates
from business_modules.agents.tools.corpora import CheckText, SearchDocuments
from business_modules.agents.tools.documents import WriteDocument
from business_modules.agents.tools.exports import ExportResult

FINAL_ANSWER = "final_answer"
FINAL_ANSWER_DESCRIPTION = "Finish with the result."

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (
    Calculate(), Dates(), SearchDocuments(), CheckText(), WriteDocument(), ExportResult())}
"""Every tool by name."""


def get_tool(name: str) -> Tool | None:
    return TOOLS.get(name)


__all__ = ["FINAL_ANSWER", "FINAL_ANSWER_DESCRIPTION", "TOOLS", "Tool", "ToolContext", "get_tool"]
