"""Business Agents: tool-using agents whose runs are stored step by step and resume after a restart
(plain Python, no Ray).

Agents are data (`catalogue`: YAML in the package; tenants add their own,
checked by the same rules in `definitions`). A run is a loop (`loop`): each
step is one LLM call with the run's whole history that answers with one tool
call (`tools`, whose argument schemas come from pydantic models), until the
model calls ``final_answer`` with a result that fits the capability's output
schema. Budgets (`budget`), timeouts and retries (`calls`), approvals before
tools with side effects, and leases that let any replica resume a run
(`runner`) bound it; `AgentsService` is what the Serve app calls. The other
services are reached through the protocols in `ports`.
"""

from business_modules.agents.catalogue import builtin, catalogue
from business_modules.agents.config import AgentsSettings
from business_modules.agents.definitions import AgentDefinition, CapabilityDefinition
from business_modules.agents.errors import (
    AgentExistsError,
    AgentLimitError,
    AgentNotFoundError,
    AgentsBusyError,
    AgentsError,
    BuiltinAgentError,
    CapabilityNotFoundError,
    InputTooLargeError,
    InvalidInputsError,
    NotAwaitingApprovalError,
    RunFinishedError,
    RunNotFoundError,
)
from business_modules.agents.models import (
    ExecuteRequest,
    RejectRequest,
    Run,
    RunParameters,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
)
from business_modules.agents.ports import (
    CorpusHit,
    CorpusPort,
    DocumentPort,
    ExportedFile,
    ExportPort,
    Services,
    ToolFailed,
    ToolUnavailable,
    WrittenDocument,
)
from business_modules.agents.service import AgentEntry, AgentsService, RunEvent
from business_modules.agents.tools import FINAL_ANSWER, TOOLS

__all__ = [
    "FINAL_ANSWER",
    "TOOLS",
    "AgentDefinition",
    "AgentEntry",
    "AgentExistsError",
    "AgentLimitError",
    "AgentNotFoundError",
    "AgentsBusyError",
    "AgentsError",
    "AgentsService",
    "AgentsSettings",
    "BuiltinAgentError",
    "CapabilityDefinition",
    "CapabilityNotFoundError",
    "CorpusHit",
    "CorpusPort",
    "DocumentPort",
    "ExecuteRequest",
    "ExportPort",
    "ExportedFile",
    "InputTooLargeError",
    "InvalidInputsError",
    "NotAwaitingApprovalError",
    "RejectRequest",
    "Run",
    "RunEvent",
    "RunFinishedError",
    "RunNotFoundError",
    "RunParameters",
    "RunStatus",
    "Services",
    "Step",
    "StepKind",
    "StepStatus",
    "ToolFailed",
    "ToolUnavailable",
    "WrittenDocument",
    "builtin",
    "catalogue",
]
