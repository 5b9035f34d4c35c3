"""Domain exceptions of Business Agents, each with a stable ``code`` the HTTP adapter maps in one place."""

from __future__ import annotations


class AgentsError(Exception):
    """Base class of every Business Agents error."""

    code = "agents_error"


class AgentNotFoundError(AgentsError, LookupError):
    """No agent by that id for this tenant."""

    code = "agent_not_found"


class CapabilityNotFoundError(AgentsError, LookupError):
    """The agent has no capability by that name."""

    code = "capability_not_found"


class InvalidInputsError(AgentsError, ValueError):
    """A run's inputs or parameters do not fit the capability's schema (caller error)."""

    code = "invalid_inputs"


class InputTooLargeError(InvalidInputsError):
    """A request exceeds a size limit from `constants`."""

    code = "content_too_large"


class AgentExistsError(AgentsError):
    """The tenant (or the catalogue) already has an agent with that id."""

    code = "agent_exists"


class AgentLimitError(AgentsError):
    """The tenant already defined its maximum of agents."""

    code = "agent_limit"


class BuiltinAgentError(AgentsError):
    """Catalogue agents cannot be changed or deleted through the API."""

    code = "builtin_agent"


class RunNotFoundError(AgentsError, LookupError):
    """No run with that id (or not the caller's)."""

    code = "run_not_found"


class RunFinishedError(AgentsError):
    """The run already ended."""

    code = "run_finished"


class NotAwaitingApprovalError(AgentsError):
    """Approve or reject on a run that is not waiting for an approval."""

    code = "not_awaiting_approval"


class AgentsBusyError(AgentsError):
    """The tenant already has its maximum of unfinished runs on this replica; retry later."""

    code = "too_many_runs"
