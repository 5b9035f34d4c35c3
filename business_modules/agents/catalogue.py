"""The built-in agents: one YAML file per agent in ``catalogue/``, loaded and checked once.

They are data, so adding an agent to the catalogue is adding a file, and a
tenant's agent (`AgentDefinition` through the API) is checked by exactly the
same rules. A file that does not validate fails the import with its name in
the message: a broken catalogue must never deploy.
"""

from __future__ import annotations

import functools
from importlib import resources

import yaml
from pydantic import ValidationError

from business_modules.agents.definitions import AgentDefinition

PACKAGE = "business_modules.agents"
FOLDER = "catalogue"


@functools.cache
def catalogue() -> dict[str, AgentDefinition]:
    """The built-in agents by id, in file-name order."""
    agents: dict[str, AgentDefinition] = {}
    folder = resources.files(PACKAGE).joinpath(FOLDER)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        try:
            agent = AgentDefinition.model_validate(yaml.safe_load(entry.read_text(encoding="utf-8")))
        except (yaml.YAMLError, ValidationError) as exc:
            raise RuntimeError(f"catalogue file {entry.name} is not a valid agent: {exc}") from exc
        if agent.id in agents:
            raise RuntimeError(f"catalogue file {entry.name} repeats agent id {agent.id!r}")
        agents[agent.id] = agent
    return agents


def builtin(agent_id: str) -> AgentDefinition | None:
    """A catalogue agent by id, or None."""
    return catalogue().get(agent_id)
