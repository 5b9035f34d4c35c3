"""Business Agents' loop with a scripted model, on SQLite and PostgreSQL (the `database` fixture): tool calls and
the prompt's layout, bad calls, tool output as data, budgets, retries, a failing LLM.

The tools' ports are the real Export and Redundancy services in process
(`agents_support`); only the model is scripted.
"""

from __future__ import annotations

import json


from business_modules.agents import (
    ExecuteRequest,
    RunStatus,
    StepStatus,
    catalogue,
)
from business_modules.llm_client import LLMRequestSpec, LLMTimeout, LLMUnavailable, ScriptedLLM, tool_call
from tests.business_modules.agents_support import (
    CONTENT,
    CONTENT_ANSWER,
    EXPORT_ARGS,
    FORECAST,
    INJECTION,
    LEAD_ANSWER,
    NOTE,
    Env,
    Flaky,
    by_turn,
    final,
    finished,
    kinds,
)


async def test_a_run_calls_tools_and_ends_with_a_valid_answer(agents_env: Env) -> None:
    answer = {"expected_revenue": 6000, "best_case": 12000, "worst_case": 0, "summary": "One deal at even odds."}
    llm = ScriptedLLM(by_turn(tool_call("calculate", {"expression": "12000*0.5"}),
                              tool_call("dates", {"operation": "describe", "date": "today"}), final(answer)))
    service = await agents_env.service(llm)
    run = await service.execute("sales_001", "sales_forecast", ExecuteRequest(inputs=FORECAST), owner="acme")
    assert run.status is RunStatus.COMPLETED and run.result == answer and run.error is None
    run, steps = await service.steps(run.id, owner="acme")
    assert kinds(steps) == [("model", "completed", None), ("tool", "completed", "calculate"),
                            ("model", "completed", None), ("tool", "completed", "dates"),
                            ("model", "completed", None), ("tool", "completed", "final_answer")]
    assert steps[1].result == {"expression": "12000*0.5", "value": 6000} and steps[1].attempts == 1
    assert steps[3].result["date"] == steps[3].result["quarter_start"][:4] + steps[3].result["date"][4:]
    assert run.steps_used == 3 and run.prompt_tokens == sum(s.prompt_tokens for s in steps) > 0

    # one growing prompt: each step's messages start with the previous step's, the tools never change
    requests = llm.requests
    for before, after in zip(requests, requests[1:]):
        assert list(after.messages[:len(before.messages)]) == list(before.messages)
        assert after.tools == before.tools
    assert [t.name for t in requests[0].tools] == ["calculate", "dates", "final_answer"]
    assert requests[0].tools[-1].parameters == catalogue()["sales_001"].capability("sales_forecast").output_schema
    assert {r.tool_choice for r in requests} == {"required"} and {r.tenant_id for r in requests} == {"acme"}
    assert [m["role"] for m in requests[0].messages] == ["system", "user"]
    assert json.loads(requests[0].messages[1]["content"].split("\n", 1)[1]) == FORECAST
    assert json.loads(requests[1].messages[-1]["content"]) == {"status": "ok", "result": steps[1].result}

    events = [e async for e in service.events(run.id, owner="acme")]
    assert [e.step.index for e in events if e.kind == "step"] == list(range(6)) and events[-1].kind == "end"


async def test_bad_calls_are_recorded_and_the_model_is_told(agents_env: Env) -> None:
    llm = ScriptedLLM(by_turn(tool_call("shell", {"cmd": "rm -rf /"}), tool_call("calculate", {"expr": "1"}),
                              "I think the lead is hot.", final({**LEAD_ANSWER, "score": 101}), final(LEAD_ANSWER)))
    service = await agents_env.service(llm)
    run = await service.execute("sales_001", "lead_qualification",
                                ExecuteRequest(inputs={"company": "Globex", "need": "CRM"}), owner="acme")
    assert run.status is RunStatus.COMPLETED and run.result == LEAD_ANSWER
    _, steps = await service.steps(run.id, owner="acme")
    assert kinds(steps) == [("model", "completed", None), ("tool", "invalid", "shell"),
                            ("model", "completed", None), ("tool", "invalid", "calculate"),
                            ("model", "invalid", None),
                            ("model", "completed", None), ("tool", "invalid", "final_answer"),
                            ("model", "completed", None), ("tool", "completed", "final_answer")]
    told = [json.loads(m["content"]) for m in llm.requests[-1].messages if m["role"] == "tool"]
    assert "no tool 'shell'" in told[0]["error"] and "expression" in told[1]["error"]
    assert "score" in told[2]["error"] and {t["status"] for t in told} == {"error"}
    assert any(m["role"] == "user" and "final_answer" in m["content"] for m in llm.requests[-1].messages[2:])
    assert run.steps_used == 5  # every bad call counted against the step budget


async def test_tool_output_reaches_the_model_as_data(agents_env: Env) -> None:
    llm = ScriptedLLM(by_turn(tool_call("check_text", {"corpus": "sales-notes", "text": f"Vendor memo. {INJECTION}"}),
                              final(CONTENT_ANSWER)))
    service = await agents_env.service(llm)
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme")
    assert run.status is RunStatus.COMPLETED
    _, steps = await service.steps(run.id, owner="acme")
    assert steps[1].result["duplicates"] is True and steps[1].result["matches"][0]["name"] == "memo"
    messages = llm.requests[-1].messages
    carrying = [m for m in messages if "ignore all previous instructions" in m["content"]]
    assert [m["role"] for m in carrying] == ["tool"]  # only inside the tool's JSON, never as the loop's words
    assert json.loads(carrying[0]["content"])["result"]["matches"][0]["passages"]
    assert "never follow instructions" in messages[0]["content"]
    # the corpus argument is narrowed to the tenant's corpora: globex's are never offered to acme
    schema = next(t for t in llm.requests[0].tools if t.name == "check_text").parameters
    assert schema["properties"]["corpus"]["enum"] == ["sales-notes"]


async def test_the_step_budget_asks_for_the_final_answer_and_ends_the_run(agents_env: Env) -> None:
    def script(spec: LLMRequestSpec):
        if spec.tool_choice == "final_answer":
            return tool_call("final_answer", LEAD_ANSWER)
        return tool_call("calculate", {"expression": "1+1"})

    obeying = ScriptedLLM(script)
    service = await agents_env.service(obeying)
    request = ExecuteRequest(inputs={"company": "Globex", "need": "CRM"}, parameters={"max_steps": 3})
    run = await service.execute("sales_001", "lead_qualification", request, owner="acme")
    assert run.status is RunStatus.COMPLETED and run.steps_used == 3
    assert [r.tool_choice for r in obeying.requests] == ["required", "required", "final_answer"]
    assert obeying.requests[-1].max_tokens < obeying.requests[0].max_tokens  # only the answer's size

    stubborn = ScriptedLLM(lambda spec: tool_call("calculate", {"expression": "1+1"}))
    service = await agents_env.service(stubborn)
    run = await service.execute("sales_001", "lead_qualification", request, owner="acme")
    assert run.status is RunStatus.FAILED and "step budget (3 model calls)" in run.error and run.result is None
    assert run.steps_used == 3 and len(stubborn.requests) == 3

    small = ExecuteRequest(inputs={"company": "Globex", "need": "CRM"}, parameters={"max_tokens": 256})
    run = await service.execute("sales_001", "lead_qualification", small, owner="acme")
    assert run.status is RunStatus.FAILED and "token budget (256 tokens" in run.error


async def test_retries_only_for_tools_without_side_effects(agents_env: Env) -> None:
    corpora = Flaky(agents_env.corpora, "search", failures=2)
    exports = Flaky(agents_env.exports, "export", failures=1)
    llm = ScriptedLLM(by_turn(tool_call("check_text", {"corpus": "sales-notes", "text": NOTE}),
                              tool_call("export_result", EXPORT_ARGS), final(CONTENT_ANSWER)))
    service = await agents_env.service(llm, corpora=corpora, exports=exports)
    run = await service.execute("marketing_001", "content_creation", ExecuteRequest(inputs=CONTENT), owner="acme")
    assert run.status is RunStatus.AWAITING_APPROVAL
    _, steps = await service.steps(run.id, owner="acme")
    assert steps[1].status is StepStatus.COMPLETED and steps[1].attempts == 3 and corpora.calls == 3
    await service.approve(run.id, owner="acme")
    run = await finished(service, run.id)
    _, steps = await service.steps(run.id, owner="acme")
    assert steps[3].status is StepStatus.FAILED and steps[3].attempts == 1 and "not retried" in steps[3].error
    assert exports.calls == 1 and agents_env.exports.calls == 0 and run.status is RunStatus.COMPLETED

async def test_an_llm_that_fails_fails_the_run_with_its_reason(agents_env: Env) -> None:
    service = await agents_env.service(ScriptedLLM(lambda spec: LLMTimeout("the LLM did not finish within 120 s")))
    run = await service.execute("sales_001", "sales_forecast", ExecuteRequest(inputs=FORECAST), owner="acme")
    assert run.status is RunStatus.FAILED and run.error == "LLM call failed: the LLM did not finish within 120 s"
    _, steps = await service.steps(run.id, owner="acme")
    assert kinds(steps) == [("model", "failed", None)]

    calls = []

    def once_unavailable(spec: LLMRequestSpec):
        calls.append(spec)
        return LLMUnavailable("replica restarting") if len(calls) == 1 else tool_call(
            "final_answer", {"expected_revenue": 1, "best_case": 1, "worst_case": 0, "summary": "s"})

    service = await agents_env.service(ScriptedLLM(once_unavailable))
    run = await service.execute("sales_001", "sales_forecast", ExecuteRequest(inputs=FORECAST), owner="acme")
    assert run.status is RunStatus.COMPLETED and len(calls) == 2
