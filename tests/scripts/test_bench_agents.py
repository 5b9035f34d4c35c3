"""`blatam bench agents`: the workload, the summary of a run and the ratios, without Ray."""

from __future__ import annotations

import random

import pytest

from business_modules.agents import AgentsSettings, ExecuteRequest, catalogue
from business_modules.agents.schemas import validation_errors
from scripts.bench.agents import CACHE_OFF, LLM_ARGS, MAX_MODEL_LEN, ratios, summarise
from scripts.bench.agents_workload import capability_order, value_for, workload


def test_the_workload_takes_every_capability_round_robin_across_agents() -> None:
    order = capability_order()
    every = {(a.id, c.name) for a in catalogue().values() for c in a.capabilities}
    assert set(order) == every and len(order) == len(every)
    assert len({agent for agent, _ in order[: len(catalogue())]}) == len(catalogue())  # each agent before repeats
    specs = workload(20, seed=3, max_steps=5)
    assert [(s.agent_id, s.capability) for s in specs] == [order[i % len(order)] for i in range(20)]


def test_every_body_is_a_valid_request_and_the_seed_repeats_it() -> None:
    specs = workload(40, seed=3, max_steps=5)
    assert specs == workload(40, seed=3, max_steps=5) and specs != workload(40, seed=4, max_steps=5)
    for spec in specs:
        request = ExecuteRequest.model_validate(spec.body)
        assert request.parameters.max_steps == 5 and request.parameters.temperature == 0.0
        schema = catalogue()[spec.agent_id].capability(spec.capability).input_schema
        assert validation_errors(schema, request.inputs) == []
        assert spec.path == f"/api/v1/agents/agents/{spec.agent_id}/capabilities/{spec.capability}/execute"


def test_values_follow_the_schema_bounds_and_unknown_keywords_are_refused() -> None:
    rng = random.Random(0)
    for _ in range(50):
        assert len(value_for({"type": "string", "minLength": 3, "maxLength": 5}, rng)) in range(3, 6)
        assert 0 <= value_for({"type": "number", "minimum": 0, "maximum": 1}, rng) <= 1
        assert 1 <= len(value_for({"type": "array", "maxItems": 2, "items": {"type": "boolean"}}, rng)) <= 2
    with pytest.raises(ValueError, match="anyOf"):
        value_for({"anyOf": [{"type": "string"}]}, rng)
    with pytest.raises(ValueError, match="matching"):
        value_for({"type": "string", "pattern": "^[a-z]+$"}, rng)


def test_the_llm_context_is_the_agents_context_and_cache_off_holds_no_block() -> None:
    assert LLM_ARGS["max_model_len"] == MAX_MODEL_LEN == AgentsSettings().context_tokens
    assert LLM_ARGS["max_tokens_limit"] >= AgentsSettings().step_max_tokens
    # a prompt is shorter than the context (one new token must fit) and only full blocks are cached
    assert CACHE_OFF["block_size"] >= MAX_MODEL_LEN


def model(prompt: int, cached: int, ttft: float, latency: float, status: str = "completed") -> dict:
    return {"kind": "model", "status": status, "latency_ms": latency,
            "model": {"prompt_tokens": prompt, "cached_tokens": cached, "completion_tokens": 10, "ttft_ms": ttft}}


def tool(latency: float) -> dict:
    return {"kind": "tool", "tool": "calculate", "status": "completed", "latency_ms": latency, "model": None}


def test_summary_and_ratios() -> None:
    runs = [{"agent_id": "sales_001", "capability": "sales_forecast", "status": "completed", "error": None,
             "steps": [model(1000, 0, 400.0, 500.0), tool(100.0), model(1200, 1000, 100.0, 200.0), tool(50.0)]},
            {"agent_id": "hr_001", "capability": "job_posting", "status": "failed",
             "error": "Traceback (most recent call last):\n  ...\nthe step budget ran out",
             "steps": [model(1000, 800, 200.0, 300.0), tool(50.0), model(0, 0, 0.0, 0.0, status="failed")]}]
    on = summarise(runs, wall_s=30.0, approvals=1)
    assert on["model_steps"] == 3 and on["tool_steps"] == 3 and on["completion_tokens"] == 30
    assert on["token_hit_rate"] == pytest.approx(1800 / 3200)
    assert on["later_step_hit_rate"] == pytest.approx(1000 / 1200)  # the first step of each run left out
    assert on["step_ttft_p50_ms"] == 200.0 and on["step_latency_p50_ms"] == 300.0
    assert on["ttft_share_of_model_time"] == pytest.approx(700 / 1000) and on["tool_time_s"] == pytest.approx(0.2)
    assert on["completed"] == 1 and on["failed"] == ["the step budget ran out"] and on["approvals"] == 1
    assert on["steps_per_min"] == pytest.approx(6.0)
    assert on["per_run"][1] == {"capability": "hr_001/job_posting", "status": "failed", "model_steps": 1,
                                "tools": ["calculate"], "error": "the step budget ran out"}
    off = summarise([{**runs[0], "steps": [model(1000, 0, 800.0, 900.0)] * 3}], wall_s=60.0)
    result = ratios(on, off)
    assert result["steps_per_min_on_off"] == pytest.approx(2.0) and result["step_ttft_p50_on_off"] == 0.25
    assert result["same_work"] is True
    assert result["meets"] == {"token_hit_rate_on": False, "steps_per_min_ratio": True}
