"""SQL of the agents tenants define (table ``agent_definitions``, created by the ``agents`` migration).

Stored per tenant (``''`` stands for unowned: direct calls that did not come
through the gateway), so one tenant's agents are invisible to every other.
"""

from __future__ import annotations

from business_modules.agents.definitions import AgentDefinition
from business_modules.storage import Database, IntegrityError


def _tenant(owner: str | None) -> str:
    return owner or ""


async def insert_agent(db: Database, owner: str | None, agent: AgentDefinition, *, now: float) -> bool:
    """Store a new agent; False when the tenant already has one with that id."""
    try:
        await db.execute(
            "INSERT INTO agent_definitions (tenant, id, definition_json, created_at)"
            " VALUES (:tenant, :id, :definition, :now)",
            {"tenant": _tenant(owner), "id": agent.id, "definition": agent.model_dump_json(), "now": now})
    except IntegrityError:
        return False
    return True


async def get_agent(db: Database, owner: str | None, agent_id: str) -> AgentDefinition | None:
    row = await db.fetch_one("SELECT definition_json FROM agent_definitions WHERE tenant = :tenant AND id = :id",
                             {"tenant": _tenant(owner), "id": agent_id})
    return None if row is None else AgentDefinition.model_validate_json(row["definition_json"])


async def agents_of(db: Database, owner: str | None) -> list[AgentDefinition]:
    rows = await db.fetch_all("SELECT definition_json FROM agent_definitions WHERE tenant = :tenant ORDER BY id",
                              {"tenant": _tenant(owner)})
    return [AgentDefinition.model_validate_json(row["definition_json"]) for row in rows]


async def count_agents(db: Database, owner: str | None) -> int:
    return int(await db.fetch_value("SELECT COUNT(*) FROM agent_definitions WHERE tenant = :tenant",
                                    {"tenant": _tenant(owner)}) or 0)


async def delete_agent(db: Database, owner: str | None, agent_id: str) -> bool:
    return await db.execute("DELETE FROM agent_definitions WHERE tenant = :tenant AND id = :id",
                            {"tenant": _tenant(owner), "id": agent_id}) == 1
