"""Serve application `agents`: Business Agents (the original API's agents and execute route, runs with every
step, approvals, event streams).

`build_agents(args)` builds the application; `create_app(config)` is the plain
FastAPI app (usable without Ray, with a scripted LLM client in tests).
"""

from deployments.agents.app import create_app
from deployments.agents.runtime import AgentsAppConfig


def build_agents(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.agents.deployment`)."""
    from deployments.agents.deployment import build_agents as build

    return build(args)


__all__ = ["AgentsAppConfig", "build_agents", "create_app"]
