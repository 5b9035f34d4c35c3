"""Business Agents' runs with a scripted model, on SQLite and PostgreSQL (the `database` fixture): approvals,
rejections, dry runs, cancel, resume after a clean restart or a crash without repeating a side effect,
tenants, scopes, bad requests and the event stream.

Scripts answer by turn (the number of assistant messages in the prompt), so a
service built after a restart continues the same script from wherever the run
was stored.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from business_modules.agents import (
    AgentDefinition,
    AgentExistsError,
    AgentLimitError,
    AgentNotFoundError,
    BuiltinAgentError,
    CapabilityNotFoundError,
    ExecuteRequest,
    InputTooLargeError,
    InvalidInputsError,
    NotAwaitingApprovalError,
    RejectRequest,
    RunNotFoundError,
    RunStatus,
    StepKind,
    StepStatus,
    catalogue,
)
from business_modules.llm_client import ScriptedLLM, tool_call
from tests.business_modules.agents_support import (
    CONTENT,
    CONTENT_ANSWER,
    EXPORT_ARGS,
    FORECAST,
    LEAD_ANSWER,
    NOTE,
    SETTINGS,
    Clock,
    Env,
    Flaky,
    HeldLLM,
    by_turn,
    final,
    finished,
    kinds,
    wait_for,
)


async def test_side_effects_wait_for_an_approval(agents_env: Env) -> None:
    script = by_turn(tool_call("export_result", EXPORT_ARGS), final(CONTENT_ANSWER))
    llm = ScriptedLLM(script)
    service = await agents_env.service(llm)
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme")
    assert run.status is RunStatus.AWAITING_APPROVAL and agents_env.exports.calls == 0
    _, steps = await service.steps(run.id, owner="acme")
    assert steps[-1].status is StepStatus.AWAITING_APPROVAL and json.loads(steps[-1].arguments) == EXPORT_ARGS
    with pytest.raises(RunNotFoundError):
        await service.approve(run.id, owner="globex")
    await service.approve(run.id, owner="acme")
    run = await finished(service, run.id)
    _, steps = await service.steps(run.id, owner="acme")
    assert run.status is RunStatus.COMPLETED and steps[1].status is StepStatus.COMPLETED
    assert agents_env.exports.calls == 1 and await agents_env.export_jobs("acme") == 1
    job = await agents_env.exports.service.get(steps[1].result["task_id"], owner="acme")  # a real job of the tenant
    assert job.owner == "acme"
    with pytest.raises(NotAwaitingApprovalError):
        await service.approve(run.id, owner="acme")

    rejected = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT),
                                     owner="acme")
    await service.reject(rejected.id, RejectRequest(reason="no files for this one"), owner="acme")
    rejected = await finished(service, rejected.id)
    _, steps = await service.steps(rejected.id, owner="acme")
    assert rejected.status is RunStatus.COMPLETED and steps[1].status is StepStatus.REJECTED
    assert {"status": "rejected", "reason": "no files for this one"} in [
        json.loads(m["content"]) for m in llm.requests[-1].messages if m["role"] == "tool"]
    assert agents_env.exports.calls == 1

    cancelled = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT),
                                      owner="acme")
    cancelled = await service.cancel(cancelled.id, owner="acme")
    assert cancelled.status is RunStatus.CANCELLED
    with pytest.raises(NotAwaitingApprovalError):
        await service.approve(cancelled.id, owner="acme")
    _, steps = await service.steps(cancelled.id, owner="acme")
    assert steps[-1].status is StepStatus.REJECTED and agents_env.exports.calls == 1

    dry = await service.execute("marketing_001", "content_creation",
                                ExecuteRequest(inputs=CONTENT, dry_run=True), owner="acme")
    _, steps = await service.steps(dry.id, owner="acme")
    assert dry.status is RunStatus.COMPLETED and steps[1].status is StepStatus.SKIPPED
    assert steps[1].result == {"tool": "export_result", "arguments": EXPORT_ARGS} and agents_env.exports.calls == 1

async def test_a_run_resumes_after_a_clean_restart(agents_env: Env) -> None:
    script = by_turn(tool_call("calculate", {"expression": "12000*0.5"}),
                     final({"expected_revenue": 6000, "best_case": 12000, "worst_case": 0, "summary": "s"}))
    first = HeldLLM(ScriptedLLM(script), hold_at=2)
    service = await agents_env.service(first)
    run = await service.submit("sales_001", "sales_forecast", ExecuteRequest(inputs=FORECAST), owner="acme")
    await asyncio.wait_for(first.held.wait(), 20)
    await service.close()  # the replica stops mid-call; the run's lease ends now
    assert (await service.get(run.id, owner="acme")).status is RunStatus.RUNNING

    second = ScriptedLLM(script)
    restarted = await agents_env.service(second)  # same database, a new replica
    run = await finished(restarted, run.id)
    _, steps = await restarted.steps(run.id, owner="acme")
    assert run.status is RunStatus.COMPLETED and run.result["expected_revenue"] == 6000
    assert kinds(steps) == [("model", "completed", None), ("tool", "completed", "calculate"),
                            ("model", "completed", None), ("tool", "completed", "final_answer")]
    assert steps[2].attempts == 2  # the call in flight was asked again, nothing else was
    assert len(second.requests) == 1 and second.requests[0].messages == first.requests[1].messages


@pytest.mark.parametrize("crash", ["after_the_export", "during_the_export"])
async def test_a_crashed_replica_never_repeats_a_side_effect(agents_env: Env, crash: str) -> None:
    script = by_turn(tool_call("export_result", EXPORT_ARGS), final(CONTENT_ANSWER))
    first = HeldLLM(ScriptedLLM(script), hold_at=2 if crash == "after_the_export" else None)
    if crash == "during_the_export":
        agents_env.exports.hold = asyncio.Event()
    service = await agents_env.service(first)
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme")
    await service.approve(run.id, owner="acme")
    if crash == "after_the_export":
        await asyncio.wait_for(first.held.wait(), 20)
    else:
        await wait_for(lambda: agents_env.export_jobs("acme"))
    # The first replica hangs (no lease renewals reach past its lease, as if it died): a replica whose clock
    # is past that lease adopts the run.
    later = Clock(offset_s=SETTINGS.run_lease_s + 5)
    agents_env.exports.hold = None
    second = ScriptedLLM(script)
    restarted = await agents_env.service(second, clock=later)
    run = await finished(restarted, run.id)
    _, steps = await restarted.steps(run.id, owner="acme")
    assert run.status is RunStatus.COMPLETED and agents_env.exports.calls == 1 and await agents_env.export_jobs("acme") == 1
    if crash == "after_the_export":
        assert steps[1].status is StepStatus.COMPLETED and steps[1].result["task_id"]
    else:
        assert steps[1].status is StepStatus.INTERRUPTED and "not called again" in steps[1].error
        assert json.loads(second.requests[0].messages[-1]["content"])["status"] == "unknown"
    # the old replica wakes up: every write it tries is refused, nothing changes
    first.release.set()
    if isinstance(getattr(agents_env.exports, "hold", None), asyncio.Event):
        agents_env.exports.hold.set()
    await asyncio.sleep(0.3)
    _, again = await restarted.steps(run.id, owner="acme")
    assert kinds(again) == kinds(steps) and agents_env.exports.calls == 1


async def test_bad_requests_and_tenants(agents_env: Env) -> None:
    service = await agents_env.service(ScriptedLLM(by_turn(final(LEAD_ANSWER))),
                                settings=SETTINGS.model_copy(update={"max_agents_per_tenant": 1}))
    lead = ExecuteRequest(inputs={"company": "Globex", "need": "CRM"})
    with pytest.raises(AgentNotFoundError):
        await service.execute("sales_999", "lead_qualification", lead, owner="acme")
    with pytest.raises(CapabilityNotFoundError, match="lead_qualification"):
        await service.execute("sales_001", "cold_calling", lead, owner="acme")
    with pytest.raises(InvalidInputsError, match="'need' is a required property"):
        await service.execute("sales_001", "lead_qualification", ExecuteRequest(inputs={"company": "G"}),
                              owner="acme")
    with pytest.raises(InvalidInputsError, match="inputs.employees"):
        await service.execute("sales_001", "lead_qualification",
                              ExecuteRequest(inputs={"company": "G", "need": "x", "employees": "many"}), owner="acme")
    with pytest.raises(InputTooLargeError):
        await service.execute("sales_001", "lead_qualification",
                              ExecuteRequest(inputs={"company": "G", "need": "x" * 9000}), owner="acme")
    with pytest.raises(InvalidInputsError, match="NaN"):
        await service.execute("sales_001", "sales_forecast", ExecuteRequest(inputs={"pipeline": [
            {"deal": "x", "value": float("nan"), "probability": 0.5}]}), owner="acme")
    with pytest.raises(InvalidInputsError, match="parameters.max_steps"):
        await service.execute("sales_001", "lead_qualification",
                              ExecuteRequest(inputs=lead.inputs, parameters={"max_steps": 1000}), owner="acme")
    assert await service.runs(owner="acme") == []  # nothing was stored

    run = await service.execute("sales_001", "lead_qualification", lead, owner="acme")
    assert run.status is RunStatus.COMPLETED
    for call in (service.get(run.id, owner="globex"), service.get(run.id, owner=None),
                 service.cancel(run.id, owner="globex"), service.steps(run.id, owner="globex")):
        with pytest.raises(RunNotFoundError):
            await call
    assert [r.id for r in await service.runs(owner="acme")] == [run.id] and await service.runs(owner="globex") == []

    mine = catalogue()["sales_001"].model_dump()
    mine.update(id="acme_sales", name="Acme Sales")
    created = await service.create_agent(AgentDefinition.model_validate(mine), owner="acme")
    assert not created.builtin
    assert "acme_sales" in [a.definition.id for a in await service.agents(owner="acme")]
    assert "acme_sales" not in [a.definition.id for a in await service.agents(owner="globex")]
    with pytest.raises(AgentNotFoundError):
        await service.execute("acme_sales", "lead_qualification", lead, owner="globex")
    own = await service.execute("acme_sales", "lead_qualification", lead, owner="acme")
    assert own.status is RunStatus.COMPLETED and own.agent["name"] == "Acme Sales"
    with pytest.raises(AgentLimitError):
        await service.create_agent(AgentDefinition.model_validate({**mine, "id": "acme_more"}), owner="acme")
    with pytest.raises(AgentExistsError):
        await service.create_agent(AgentDefinition.model_validate({**mine, "id": "sales_001"}), owner="globex")
    with pytest.raises(BuiltinAgentError):
        await service.delete_agent("sales_001", owner="acme")
    with pytest.raises(AgentNotFoundError):
        await service.delete_agent("acme_sales", owner="globex")
    await service.delete_agent("acme_sales", owner="acme")
    _, steps = await service.steps(own.id, owner="acme")  # the run keeps the definition it started with
    assert steps[0].kind is StepKind.MODEL


async def test_a_run_reaches_only_the_services_its_caller_may(agents_env: Env) -> None:
    corpora = Flaky(agents_env.corpora, "search", failures=0)
    llm = ScriptedLLM(by_turn(tool_call("check_text", {"corpus": "sales-notes", "text": NOTE}),
                              final(CONTENT_ANSWER)))
    service = await agents_env.service(llm, corpora=corpora)
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme",
                                scopes=("agents", "export"))
    assert [t.name for t in llm.requests[0].tools] == ["export_result", "final_answer"]
    _, steps = await service.steps(run.id, owner="acme")
    assert steps[1].status is StepStatus.INVALID and "no tool 'check_text'" in steps[1].error
    assert corpora.calls == 0 and run.status is RunStatus.COMPLETED  # the key cannot reach redundancy: nor can its run
    everything = ScriptedLLM(by_turn(final(CONTENT_ANSWER)))
    service = await agents_env.service(everything)
    await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme",
                          scopes=("*",))
    assert [t.name for t in everything.requests[0].tools] == ["search_documents", "check_text", "export_result",
                                                              "final_answer"]


async def test_the_event_stream_pings_while_a_run_waits(agents_env: Env) -> None:
    service = await agents_env.service(ScriptedLLM(by_turn(tool_call("export_result", EXPORT_ARGS))))
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme")
    assert run.status is RunStatus.AWAITING_APPROVAL
    kinds_seen = []
    async for event in service.events(run.id, owner="acme", poll_s=0.01, ping_s=0.05):
        kinds_seen.append(event.kind)
        if event.kind == "ping":
            break
    assert kinds_seen == ["step", "step", "status", "ping"]
    await service.cancel(run.id, owner="acme")
