"""The agents FastAPI app: parse, call the business module, shape the answer.

Routes (inside the application; the Serve route prefix is ``/agents`` and the
gateway reaches the same routes as ``/api/v1/agents/...``):

- ``GET /agents``, ``GET /agents/{id}``: the catalogue and the tenant's own agents.
- ``POST /agents``: a tenant's agent (201), validated like the catalogue's;
  ``DELETE /agents/{id}`` removes it.
- ``POST /agents/{id}/capabilities/{capability}/execute`` (also the original
  ``/business-agents/agents/...``): ``{inputs, parameters?, dry_run?}`` -> 200
  once the run ended within ``parameters.wait_s``, else 202 (running, or
  waiting for an approval) with the run's id.
- ``GET /runs``, ``GET /runs/{id}`` (every step), ``GET /runs/{id}/events``
  (server-sent events: ``step``, ``status``, ``end``).
- ``POST /runs/{id}/cancel``, ``POST /runs/{id}/approve``, ``POST /runs/{id}/reject``.
- ``GET /tools``, ``GET /health``.

Domain errors map to HTTP in `ERRORS` only; every error has the uniform body.
Runs and agents created through the gateway belong to the caller's tenant;
another tenant's ids (and unowned ones) are 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from business_modules.agents import (
    TOOLS,
    AgentDefinition,
    AgentExistsError,
    AgentLimitError,
    AgentNotFoundError,
    AgentsBusyError,
    AgentsService,
    BuiltinAgentError,
    CapabilityNotFoundError,
    ExecuteRequest,
    InputTooLargeError,
    InvalidInputsError,
    NotAwaitingApprovalError,
    RejectRequest,
    RunFinishedError,
    RunNotFoundError,
)
from deployments.agents import schemas as s
from deployments.agents import views
from deployments.agents.runtime import AgentsAppConfig, Runtime
from deployments.common import (
    BodySizeLimitMiddleware,
    ErrorSpec,
    InlineBodyMiddleware,
    RequestIdMiddleware,
    forwarded_caller,
    install_error_handlers,
)
from deployments.common.service_app import STORAGE_ERRORS, caller_tenant, client_base_path

GATEWAY_PREFIX = "/api/v1/agents"
BUSY_RETRY_AFTER_S = 5
_HEX_ID = 32

ERRORS: dict[type[BaseException], ErrorSpec] = {
    InputTooLargeError: ErrorSpec(413, "content_too_large"),
    InvalidInputsError: ErrorSpec(422, "invalid_inputs"),
    AgentNotFoundError: ErrorSpec(404, "agent_not_found"),
    CapabilityNotFoundError: ErrorSpec(404, "capability_not_found"),
    RunNotFoundError: ErrorSpec(404, "run_not_found"),
    AgentExistsError: ErrorSpec(409, "agent_exists"),
    AgentLimitError: ErrorSpec(409, "agent_limit"),
    BuiltinAgentError: ErrorSpec(409, "builtin_agent"),
    RunFinishedError: ErrorSpec(409, "run_finished"),
    NotAwaitingApprovalError: ErrorSpec(409, "not_awaiting_approval"),
    AgentsBusyError: ErrorSpec(429, "too_many_runs", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}),
    **STORAGE_ERRORS,
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _service(request: Request) -> AgentsService:
    return await _runtime(request).service()


def _caller_scopes(request: Request) -> tuple[str, ...] | None:
    """The gateway caller's scopes, which bound the tools a run may use (None: a direct call)."""
    caller = forwarded_caller(request)
    return None if caller is None else caller.scopes


Service = Annotated[AgentsService, Depends(_service)]
Owner = Annotated[str | None, Depends(caller_tenant)]
Scopes = Annotated[tuple[str, ...] | None, Depends(_caller_scopes)]


def _base(request: Request) -> str:
    return client_base_path(request, GATEWAY_PREFIX)


def _run_id(value: str) -> str:
    if len(value) != _HEX_ID or any(c not in "0123456789abcdef" for c in value):
        raise RunNotFoundError(f"no agent run {value[:64]}")
    return value


agents = APIRouter(tags=["agents"])
runs = APIRouter(tags=["runs"])


@agents.get("/agents", response_model=list[s.AgentOut], summary="The catalogue's agents and this tenant's own")
async def list_agents(service: Service, owner: Owner) -> Any:
    return [views.agent_out(entry) for entry in await service.agents(owner=owner)]


@agents.get("/agents/{agent_id}", response_model=s.AgentOut, summary="One agent, its capabilities and tools")
async def get_agent(agent_id: str, service: Service, owner: Owner) -> Any:
    return views.agent_out(await service.agent(agent_id, owner=owner))


@agents.post("/agents", status_code=201, response_model=s.AgentOut, summary="Define an agent for this tenant")
async def create_agent(body: AgentDefinition, service: Service, owner: Owner) -> Any:
    return views.agent_out(await service.create_agent(body, owner=owner))


@agents.delete("/agents/{agent_id}", status_code=204, response_class=Response, summary="Delete this tenant's agent")
async def delete_agent(agent_id: str, service: Service, owner: Owner) -> Response:
    await service.delete_agent(agent_id, owner=owner)
    return Response(status_code=204)


@agents.post("/agents/{agent_id}/capabilities/{capability}/execute", response_model=s.Execution,
             responses={202: {"model": s.Execution, "description": "Still running, or waiting for an approval"}},
             summary="Run a capability (200 when done within wait_s, else 202)")
async def execute(agent_id: str, capability: str, body: ExecuteRequest, request: Request, service: Service,
                  owner: Owner, scopes: Scopes) -> JSONResponse:
    run = await service.execute(agent_id, capability, body, owner=owner, scopes=scopes)
    steps = None if run.status.finished else (await service.steps(run.id, owner=owner))[1]
    answer = views.execution(run, steps, _base(request))
    return JSONResponse(answer.model_dump(mode="json"), status_code=200 if run.status.finished else 202)


@agents.post("/business-agents/agents/{agent_id}/capabilities/{capability}/execute", response_model=s.Execution,
             include_in_schema=False)
async def execute_original(agent_id: str, capability: str, body: ExecuteRequest, request: Request, service: Service,
                           owner: Owner, scopes: Scopes) -> JSONResponse:
    return await execute(agent_id, capability, body, request, service, owner, scopes)


@agents.get("/business-agents/agents", response_model=list[s.AgentOut], include_in_schema=False)
async def list_agents_original(service: Service, owner: Owner) -> Any:
    return await list_agents(service, owner)


@agents.get("/business-agents/agents/{agent_id}", response_model=s.AgentOut, include_in_schema=False)
async def get_agent_original(agent_id: str, service: Service, owner: Owner) -> Any:
    return await get_agent(agent_id, service, owner)


@agents.get("/tools", response_model=list[s.ToolOut], summary="Every tool an agent may be given")
async def tools() -> Any:
    return [s.ToolOut(name=t.name, description=t.description, side_effects=t.side_effects, idempotent=t.idempotent,
                      parameters=t.parameters([])) for t in TOOLS.values()]


@runs.get("/runs", response_model=s.RunList, summary="This tenant's runs, newest first (without steps)")
async def list_runs(request: Request, service: Service, owner: Owner,
                    limit: Annotated[int, Query(ge=1, le=200)] = 50,
                    offset: Annotated[int, Query(ge=0)] = 0) -> Any:
    found = await service.runs(owner=owner, limit=limit, offset=offset)
    return s.RunList(runs=[views.run_out(r, None, _base(request), service.settings) for r in found])


@runs.get("/runs/{run_id}", response_model=s.RunOut, summary="A run with every step")
async def get_run(run_id: str, request: Request, service: Service, owner: Owner) -> Any:
    run, steps = await service.steps(_run_id(run_id), owner=owner)
    return views.run_out(run, steps, _base(request), service.settings)


@runs.get("/runs/{run_id}/events", response_class=StreamingResponse, summary="Steps as server-sent events")
async def run_events(run_id: str, request: Request, service: Service, owner: Owner) -> StreamingResponse:
    first = await service.get(_run_id(run_id), owner=owner)  # 404 before the stream starts
    base = _base(request)

    async def events() -> AsyncIterator[bytes]:
        async for event in service.events(first.id, owner=owner):
            if event.kind == "ping":
                yield b": ping\n\n"
                continue
            if event.kind == "step":
                data = views.step_out(event.step).model_dump_json()  # type: ignore[arg-type]
            else:
                data = views.run_out(event.run, None, base, service.settings).model_dump_json()
            yield f"event: {event.kind}\ndata: {data}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _with_steps(service: AgentsService, run_id: str, owner: str | None, request: Request) -> s.RunOut:
    run, steps = await service.steps(run_id, owner=owner)
    return views.run_out(run, steps, _base(request), service.settings)


@runs.post("/runs/{run_id}/cancel", response_model=s.RunOut, summary="Cancel an unfinished run")
async def cancel(run_id: str, request: Request, service: Service, owner: Owner) -> Any:
    await service.cancel(_run_id(run_id), owner=owner)
    return await _with_steps(service, run_id, owner, request)


@runs.post("/runs/{run_id}/approve", response_model=s.RunOut, summary="Let the waiting tool call happen")
async def approve(run_id: str, request: Request, service: Service, owner: Owner) -> Any:
    await service.approve(_run_id(run_id), owner=owner)
    return await _with_steps(service, run_id, owner, request)


@runs.post("/runs/{run_id}/reject", response_model=s.RunOut, summary="Refuse the waiting tool call")
async def reject(run_id: str, request: Request, service: Service, owner: Owner,
                 body: Annotated[RejectRequest | None, Body()] = None) -> Any:
    await service.reject(_run_id(run_id), body or RejectRequest(), owner=owner)
    return await _with_steps(service, run_id, owner, request)


@agents.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """200 when the database answers; 503 (uniform body) otherwise."""
    runtime = _runtime(request)
    await runtime.ping()
    config = runtime.config
    return {"status": "healthy", "service": "agents", "database": "ok", "llm_app": config.llm_app,
            "tool_apps": {"redundancy": config.redundancy_app, "bul": config.bul_app, "export": config.export_app},
            "timestamp": datetime.now(timezone.utc).isoformat()}


def create_app(config: AgentsAppConfig | None = None, *, llm: Any = None, services: Any = None) -> FastAPI:
    """The app of one replica (or of a test; ``llm`` and ``services`` replace the Serve clients)."""
    config = config or AgentsAppConfig()
    runtime = Runtime(config, llm=llm, services=services)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.try_start()
        yield
        await runtime.close()

    app = FastAPI(title="Blatam Business Agents", version="1.0", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app, ERRORS)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, echo_header=False)
    app.add_middleware(InlineBodyMiddleware)  # outermost: the body Serve's proxy sent with the request
    app.include_router(agents)
    app.include_router(runs)
    return app


__all__ = ["ERRORS", "create_app"]
