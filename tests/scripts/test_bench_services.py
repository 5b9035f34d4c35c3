"""`blatam bench services`: the workload, the summary of a run and the ratios, without Ray."""

from __future__ import annotations

import pytest

from business_modules.bul import DOCUMENT_TYPES, GenerateRequest
from scripts.bench.services import CACHE_OFF, MAX_MODEL_LEN, ratios, summarise, workload


def test_the_workload_mixes_every_type_and_repeats_with_its_seed() -> None:
    bodies = workload(20, seed=7)
    assert len(bodies) == 20 and {b["document_type"] for b in bodies} == {t.name for t in DOCUMENT_TYPES}
    assert bodies == workload(20, seed=7) and bodies != workload(20, seed=8)
    for body in bodies:
        GenerateRequest.model_validate(body)  # every body is a valid request


def test_cache_off_cannot_hold_a_block() -> None:
    assert CACHE_OFF["block_size"] > MAX_MODEL_LEN  # only full blocks are cached


def status(state: str, steps: list[tuple[str, int, int, float]]) -> dict:
    return {"status": state, "error": None if state == "completed" else "LLM call failed: x",
            "sections": [{"step": step, "prompt_tokens": p, "cached_tokens": c, "ttft_ms": t}
                         for step, p, c, t in steps]}


def test_summary_and_ratios() -> None:
    on = summarise([status("completed", [("outline", 100, 0, 50.0), ("section", 100, 90, 10.0),
                                         ("section", 100, 90, 30.0)]),
                    status("failed", [("outline", 100, 0, 40.0)])], wall_s=30.0)
    assert on["token_hit_rate"] == pytest.approx(180 / 400)
    assert on["section_token_hit_rate"] == pytest.approx(0.9)
    assert on["section_ttft_p50_ms"] == 20.0 and on["completed"] == 1 and on["jobs_per_min"] == 2.0
    assert on["failed"] == ["LLM call failed: x"]
    off = summarise([status("completed", [("section", 100, 0, 80.0)])], wall_s=60.0)
    result = ratios(on, off)
    assert result["section_ttft_p50_on_off"] == 0.25 and result["jobs_per_min_on_off"] == 2.0
    assert result["meets"] == {"token_hit_rate_on": False, "ttft_ratio": True, "jobs_per_min_ratio": True}
