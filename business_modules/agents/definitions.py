"""What an agent is, as data: capabilities with an input schema, instructions, allowed tools and an output schema.

The catalogue's agents (YAML in `business_modules/agents/catalogue/`) and the
agents tenants add through the API are the same `AgentDefinition`, checked
the same way: JSON Schemas valid, the output schema bounded (the
``final_answer`` call must fit one step's tokens), tools known, sizes within
`constants`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from business_modules.agents import constants as C
from business_modules.agents.schemas import check_schema, json_size_bound
from business_modules.agents.tools import FINAL_ANSWER, TOOLS

ID_PATTERN = r"^[a-z][a-z0-9_]{2,63}$"
CAPABILITY_PATTERN = r"^[a-z][a-z0-9_]{1,63}$"


class CapabilityDefinition(BaseModel):
    """One thing an agent can do."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CAPABILITY_PATTERN)
    description: str = Field(min_length=1, max_length=300)
    instructions: str = Field(min_length=1, max_length=C.MAX_INSTRUCTIONS_CHARS,
                              description="What the model is told to do (the system prompt's task part).")
    input_schema: dict[str, Any] = Field(description="JSON Schema (object) of the run's inputs.")
    output_schema: dict[str, Any] = Field(description="JSON Schema (object) of the result; every string needs "
                                                      "maxLength and every array maxItems.")
    tools: list[str] = Field(default_factory=list, max_length=len(TOOLS))
    start_with: str | None = Field(None, description="A tool the first step always calls (e.g. a search that "
                                                     "grounds the answer in the tenant's documents).")

    @field_validator("input_schema")
    @classmethod
    def _input_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value, what="input_schema")
        return value

    @field_validator("output_schema")
    @classmethod
    def _output_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_schema(value, what="output_schema")
        bound = json_size_bound(value)
        if bound is None:
            raise ValueError("output_schema must be bounded: \"additionalProperties\": false on every object, "
                             "maxLength on every string, maxItems on every array")
        if bound > C.MAX_OUTPUT_CHARS:
            raise ValueError(f"output_schema allows answers of up to {bound} characters; at most "
                             f"{C.MAX_OUTPUT_CHARS} fit one step")
        return value

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown}; known: {sorted(TOOLS)} ({FINAL_ANSWER} is always "
                             "offered)")
        if len(set(value)) != len(value):
            raise ValueError("a tool is listed twice")
        return value

    @model_validator(mode="after")
    def _start_with_listed(self) -> CapabilityDefinition:
        if self.start_with is not None and self.start_with not in self.tools:
            raise ValueError(f"start_with {self.start_with!r} must be one of the capability's tools {self.tools}")
        return self

    def output_bound(self) -> int:
        """Characters of the longest final answer (the schema is bounded: checked above)."""
        return int(json_size_bound(self.output_schema) or 0)


class AgentDefinition(BaseModel):
    """An agent: an id, who it is, and its capabilities."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, max_length=500)
    business_area: str = Field(min_length=1, max_length=64)
    capabilities: list[CapabilityDefinition] = Field(min_length=1, max_length=C.MAX_CAPABILITIES)

    @field_validator("capabilities")
    @classmethod
    def _unique_names(cls, value: list[CapabilityDefinition]) -> list[CapabilityDefinition]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("capability names must be unique")
        return value

    @model_validator(mode="after")
    def _size(self) -> AgentDefinition:
        size = len(json.dumps(self.model_dump(), ensure_ascii=False))
        if size > C.MAX_AGENT_DEFINITION_CHARS:
            raise ValueError(f"the definition has {size} characters as JSON; at most {C.MAX_AGENT_DEFINITION_CHARS}")
        return self

    def capability(self, name: str) -> CapabilityDefinition | None:
        return next((c for c in self.capabilities if c.name == name), None)
