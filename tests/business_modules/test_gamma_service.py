"""Gamma's business module with a scripted LLM: card assembly, charts from the input's numbers, preserve
mode, exports through Export's renderer, failures and tenant isolation, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import time

import pptx
import pypdf
import pytest
from pydantic import ValidationError

from business_modules.gamma import (
    ContentRequest,
    GammaService,
    GammaSettings,
    GenerationNotFoundError,
    GenerationNotReadyError,
    GenerationPlan,
    GenerationRequest,
    JobStatus,
    Layout,
    assess,
)
from business_modules.gamma import repository as repo
from business_modules.gamma.charts import find_series
from business_modules.gamma.models import Card
from business_modules.gamma.prompts import INSTRUCTIONS
from business_modules.llm_client import LLMRequestSpec, LLMTimeout, ScriptedLLM

HOSTILE = "Revenue {{ 7 * 7 }} <script>alert(1)</script>"
INPUT = f"""Quarterly review for Acme. {HOSTILE}

North: 120
South: 95
East: 143

We plan to open two stores."""


def script(spec: LLMRequestSpec):
    if spec.schema_name == "outline":
        return {"title": "Acme quarter <b>bold</b>",
                "cards": [{"heading": "Welcome {{ x }}", "layout": "title"},
                          {"heading": "Numbers", "layout": "table"},
                          {"heading": "Next steps", "layout": "bullets"}]}
    props = spec.json_schema["properties"]
    if "subtitle" in props:
        return {"subtitle": "A short review of the quarter."}
    if "columns" in props:
        return {"columns": ["Region", "Note"], "rows": [["North", "Strong"], ["South"], ["East", "Best", "extra"]]}
    if "caption" in props:
        return {"caption": "Sales by region <script>x</script>"}
    return {"bullets": ["Open stores.", "Hire staff."]}


async def run_to_end(service: GammaService, plan: GenerationPlan, owner: str | None = "acme"):
    row = await service.submit(plan, request_json="{}", owner=owner)
    return await service.wait(row.id, owner=owner, timeout_s=30)


@pytest.fixture
async def make_service(database):
    services = []

    def make(llm, **settings) -> GammaService:
        service = GammaService(db=database, llm=llm, settings=GammaSettings(**settings))
        services.append(service)
        return service

    yield make
    for service in services:
        await service.close()


async def test_cards_chart_html_and_exports_from_a_scripted_llm(make_service) -> None:
    llm = ScriptedLLM(script)
    service = make_service(llm)
    plan = GenerationPlan.from_generation(GenerationRequest.model_validate(
        {"inputText": INPUT, "numCards": 3, "themeId": "modern", "exportAs": "pptx",
         "textOptions": {"tone": "upbeat", "audience": "board"}}))
    row = await run_to_end(service, plan)
    assert row.status is JobStatus.COMPLETED, row.error
    _, deck = await service.deck(row.id, owner="acme")

    assert deck.title == "Acme quarter <b>bold</b>" and deck.theme == "modern"
    assert [c.layout for c in deck.cards] == [Layout.TITLE, Layout.TABLE, Layout.CHART]  # numbers -> last is a chart
    assert deck.cards[0].subtitle == "A short review of the quarter."
    assert deck.cards[1].table.rows == [["North", "Strong"], ["South", ""], ["East", "Best"]]
    chart = deck.cards[2].chart
    assert chart.labels == ["North", "South", "East"] and chart.values == [120, 95, 143]
    assert chart.source == ["North: 120", "South: 95", "East: 143"]

    # Prompts: one system text for all, the user's input before each call's own ask, the tenant on every call.
    assert len(llm.requests) == 4 and {r.tenant_id for r in llm.requests} == {"acme"}
    assert all(r.messages[0]["content"] == INSTRUCTIONS for r in llm.requests)
    asks = [r.messages[1]["content"] for r in llm.requests]
    shared = asks[0].split("Task:")[0]
    assert INPUT in shared and all(a.startswith(shared) for a in asks)
    card_prefix = asks[1].split("Task:")[0]
    assert all(a.startswith(card_prefix) for a in asks[2:])  # the outline is shared by every card call

    html = row.html
    assert "{{ x }}" in html and "{{ 7 * 7 }}" not in html  # the heading's braces are text; the input isn't shown
    assert "<script" not in html and "&lt;script&gt;" in html and "&lt;b&gt;bold" in html
    assert html.count("data:image/png;base64,") == 1

    assert 0 <= row.quality_score <= 1 and set(row.quality["components"]) == {"readability", "length", "structure"}
    assert row.usage["calls"] == 4

    pdf = await service.export(row.id, "pdf", owner="acme")
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.data)).pages)
    for expected in ("Welcome {{ x }}", "Numbers", "Next steps", "<script>x</script>", "North: 120"):
        assert expected in text, expected
    deckfile = await service.export(row.id, "pptx", owner="acme")
    slides = pptx.Presentation(io.BytesIO(deckfile.data)).slides
    titles = [s.shapes.title.text for s in slides if s.shapes.title is not None]
    assert {"Welcome {{ x }}", "Numbers", "Next steps"} <= set(titles)
    assert any(shape.shape_type == 13 for s in slides for shape in s.shapes)  # the chart is a picture
    png = await service.chart(row.id, 2, "png", owner="acme")
    svg = await service.chart(row.id, 2, "svg", owner="acme")
    assert png.startswith(b"\x89PNG") and b"<svg" in svg and b"<script" not in svg


async def test_preserve_keeps_the_text_verbatim_without_the_llm(make_service) -> None:
    llm = ScriptedLLM(lambda spec: AssertionError("preserve mode must not call the LLM"))
    service = make_service(llm)
    text = f"# Intro\nFirst {HOSTILE}   spaced.\n---\nSecond part\n\nMore text.\n---\nA: 1\nB: 2"
    plan = GenerationPlan.from_generation(GenerationRequest.model_validate(
        {"inputText": text, "textMode": "preserve", "cardSplit": "inputTextBreaks", "numCards": 1}))
    row = await run_to_end(service, plan)
    assert row.status is JobStatus.COMPLETED, row.error
    _, deck = await service.deck(row.id, owner="acme")
    assert [c.heading for c in deck.cards] == ["Intro", "Second part", "Part 3"]
    assert deck.cards[0].paragraphs == [f"First {HOSTILE}   spaced."]
    assert deck.cards[1].paragraphs == ["More text."]
    assert deck.cards[2].layout is Layout.CHART and deck.cards[2].paragraphs == ["A: 1\nB: 2"]
    assert llm.requests == [] and row.usage["calls"] == 0
    markdown = (await service.export(row.id, "markdown", owner="acme")).data.decode()
    assert "\\<script\\>" in markdown or "&lt;script" in markdown or "\\<script>" in markdown


async def test_llm_failure_ends_failed_with_its_reason(make_service) -> None:
    service = make_service(ScriptedLLM(lambda spec: LLMTimeout("the LLM did not finish within 1 s")))
    plan = GenerationPlan.from_generation(GenerationRequest.model_validate({"inputText": "Plan", "numCards": 2}))
    row = await run_to_end(service, plan)
    assert row.status is JobStatus.FAILED and "did not finish within" in row.error
    with pytest.raises(Exception, match="failed"):
        await service.deck(row.id, owner="acme")

    broken = make_service(ScriptedLLM(lambda spec: "not json"))
    row = await run_to_end(broken, plan)
    assert row.status is JobStatus.FAILED and "schema" in row.error


async def test_other_tenants_ids_are_not_found_and_dead_replicas_jobs_fail(make_service, database) -> None:
    service = make_service(ScriptedLLM(script))
    plan = GenerationPlan.from_generation(GenerationRequest.model_validate({"inputText": "Plan", "numCards": 3}))
    row = await run_to_end(service, plan, owner="acme")
    for owner in ("globex", None):
        with pytest.raises(GenerationNotFoundError):
            await service.get(row.id, owner=owner)
    now = time.time()
    orphan = repo.GenerationRow(id="d" * 32, owner="acme", kind="generation", status=JobStatus.RUNNING,
                                format="presentation", text_mode="generate", theme="professional", plan_json="{}",
                                created_at=now, updated_at=now, runner_id="dead", lease_until=now - 60)
    await repo.insert(database, orphan, request_json="{}")
    seen = await service.get("d" * 32, owner="acme")
    assert seen.status is JobStatus.FAILED and seen.error.startswith("interrupted")
    live = repo.GenerationRow(**{**{f: getattr(orphan, f) for f in orphan.__slots__}, "id": "e" * 32, "lease_until": now + 600})
    await repo.insert(database, live, request_json="{}")
    with pytest.raises(GenerationNotReadyError, match="is running"):
        await service.deck("e" * 32, owner="acme")


async def test_content_plan_scores_keywords_and_length(make_service) -> None:
    service = make_service(ScriptedLLM(script))
    request = ContentRequest.model_validate({
        "content_type": "blog_post", "topic": "Cash flow", "description": "How a bakery plans cash.",
        "target_audience": "owners", "length": "short", "keywords": ["stores", "zebra"]})
    plan = GenerationPlan.from_content(request)
    assert plan.format.value == "webpage" and plan.num_cards == 3 and plan.keywords == ["stores", "zebra"]
    row = await run_to_end(service, plan)
    assert row.status is JobStatus.COMPLETED and row.title == "Cash flow"
    assert row.quality["components"]["keywords"] == 0.5
    assert any("zebra" in s for s in row.quality["suggestions"])


def test_quality_formula_on_known_text() -> None:
    cards = [Card(index=0, layout=Layout.BULLETS, heading="Plan", bullets=["The cat sat on the mat."] * 4),
             Card(index=1, layout=Layout.BULLETS, heading="Empty")]
    report = assess(title="T", cards=cards, target_words=100, keywords=["cat"])
    assert report.components["readability"] == 1.0 and report.components["keywords"] == 1.0
    assert report.components["structure"] == 0.5 and report.metrics["words"] == 26
    assert report.components["length"] == pytest.approx(0.26 / 0.75, abs=1e-3)
    assert any(s.startswith("Length: 26 words") for s in report.suggestions)
    assert any(s.startswith("Structure: 1 of 2") for s in report.suggestions)


def test_requests_refuse_bad_input() -> None:
    base = {"content_type": "email", "topic": "t", "description": "d", "target_audience": "a"}
    with pytest.raises(ValidationError, match="at most 10"):
        ContentRequest.model_validate({**base, "keywords": [f"k{i}" for i in range(11)]})
    with pytest.raises(ValidationError, match="unknown theme"):
        GenerationRequest.model_validate({"inputText": "x", "themeId": "neon"})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"inputText": "x" * 20_001})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"inputText": "x", "numCards": "3"})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"inputText": "   "})
    with pytest.raises(ValidationError):
        GenerationRequest.model_validate({"inputText": "x", "exportAs": "docx"})
    assert find_series("In 2024 we grew. No series here.") is None
    assert find_series("Q1 10%, Q2 12%, Q3 9%").values == [10, 12, 9]
    assert json.loads(GenerationRequest.model_validate({"inputText": "x"}).model_dump_json(by_alias=True))["numCards"]
