"""What a tool is: a name, a pydantic model of its arguments, its effects, and an async ``run``.

The JSON Schema the model is shown comes from the arguments model
(`business_modules.agents.schemas.model_schema`), so what the grammar makes
the model write and what the tool accepts are one definition. Each tool says
whether it has side effects (it writes something outside the run: a BUL
document, an export file). A tool with side effects is never retried, never
called without an approval, and never called again after a restart once its
call may have happened; one without is idempotent and may be retried when
its service was unavailable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

from pydantic import BaseModel

from business_modules.agents.ports import Services
from business_modules.agents.schemas import model_schema


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool call may use: whose run it is, the run's date, the tenant's corpora and the service ports."""

    run_id: str
    tenant: str | None
    today: date
    corpora: tuple[str, ...]
    services: Services
    timeout_s: float
    """The call's own bound (a tool that waits on a service keeps a margin below it)."""


class Tool(ABC):
    """One function the model may call."""

    name: ClassVar[str]
    description: ClassVar[str]
    args_model: ClassVar[type[BaseModel]]
    side_effects: ClassVar[bool] = False
    service: ClassVar[str | None] = None
    """The service the tool calls for the run's tenant (its gateway scope), if any."""
    uses_corpora: ClassVar[bool] = False
    """The ``corpus`` argument names one of the tenant's corpora (listed when a run starts)."""
    long_running: ClassVar[bool] = False
    """The call waits on a generation (bounded by ``document_timeout_s`` instead of ``tool_timeout_s``)."""

    @property
    def idempotent(self) -> bool:
        """Calling it twice with the same arguments does no more than calling it once."""
        return not self.side_effects

    def available(self, services: Services, corpora: Sequence[str]) -> bool:
        """Whether this replica (and this tenant) can offer the tool at all."""
        return True

    def permitted(self, scopes: Sequence[str] | None) -> bool:
        """Whether a caller with these gateway scopes may use the tool: an agent acts for its caller and never
        reaches a service the caller's key cannot (None: a direct call, which has no scopes to narrow)."""
        return self.service is None or scopes is None or "*" in scopes or self.service in scopes

    def parameters(self, corpora: Sequence[str]) -> dict[str, Any]:
        """The JSON Schema of the arguments as the model is shown it (a subclass may narrow it)."""
        return model_schema(self.args_model)

    def parse(self, arguments: Any, corpora: Sequence[str]) -> BaseModel:
        """The arguments as the model wrote them (JSON already parsed), validated; pydantic's ValidationError
        or ValueError when they do not fit."""
        return self.args_model.model_validate(arguments)

    @abstractmethod
    async def run(self, args: Any, ctx: ToolContext) -> dict[str, Any]:
        """Do the call; raise `ToolFailed` (told to the model) or `ToolUnavailable` (retried when idempotent)."""
