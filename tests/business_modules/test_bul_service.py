"""BUL's service with a scripted LLM: assembly of sections, verbatim inputs, versions, exports,
failures and cancellation, on SQLite and PostgreSQL (the `database` fixture)."""

from __future__ import annotations

import asyncio
import io
import json

import docx
import pytest

from business_modules.bul import (
    DOCUMENT_TYPES,
    BulService,
    BulSettings,
    DocumentNotFoundError,
    DocumentNotReadyError,
    GenerateRequest,
    InputTooLargeError,
    InvalidRequestError,
    RegenerateRequest,
    TaskNotFoundError,
    TaskStatus,
    UnknownDocumentTypeError,
    get_document_type,
)
from business_modules.bul import repository as _bul_repository  # noqa: F401 - registers bul migrations
from business_modules.bul.assembly import escape_markdown
from business_modules.llm_client import LLMRequestSpec, LLMTimeout, ScriptedLLM
from business_modules.storage import Database

HOSTILE = "{{ 7*7 }} <script>alert(1)</script>"
INPUTS = {"company_name": f"Zoë & Co {HOSTILE}", "industry": "Bakery",
          "figures": [{"label": "Revenue 2025", "value": "$1,250,000"}, {"label": "Margin", "value": "12.5%"}]}


def script(spec: LLMRequestSpec):
    if spec.json_schema is not None:
        return {key: f"note {key}" for key in spec.json_schema["properties"]}
    ask = spec.messages[-1]["content"].rsplit("Task: ", 1)[1]
    return f"Text for {ask.split(',')[0]} {ask.split(chr(34))[1]}."


async def wait_finished(service: BulService, task_id: str, owner: str | None = "acme"):
    for _ in range(500):
        task = await service.get(task_id, owner=owner)
        if task.status.finished:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} did not finish")


@pytest.fixture
async def service(database: Database):
    llm = ScriptedLLM(script)
    bul = BulService(db=database, llm=llm, settings=BulSettings())
    await bul.start()
    yield bul
    await bul.close()


def plan(**extra) -> GenerateRequest:
    return GenerateRequest(query="A plan for a neighbourhood bakery", document_type="business_plan",
                           inputs=INPUTS, **extra)


async def test_sections_are_assembled_under_fixed_headings_with_inputs_verbatim(service: BulService) -> None:
    task = await service.submit(plan(), owner="acme")
    done = await wait_finished(service, task.id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert [e["status"] for e in done.progress] == ["completed"] * 6
    document, versions, _ = await service.document(task.document_id, owner="acme")
    assert document.title == f"Business plan: Zoë & Co {HOSTILE}"
    spec = get_document_type("business_plan")
    assert [s["heading"] for s in versions[0].sections] == [s.heading for s in spec.sections]
    assert versions[0].sections[1]["body"] == "Text for write section 2 Market analysis."
    markdown = versions[0].markdown
    assert "| Revenue 2025 | $1,250,000 |" in markdown and "| Margin | 12.5% |" in markdown
    assert "\\<script\\>" in markdown and "{{ 7\\*7 }}" in markdown and "49" not in markdown

    # prompts: the type's fixed instructions first, then the shared inputs + outline, the ask last
    requests = service.llm.requests
    assert len(requests) == 1 + len(spec.sections) and requests[0].tenant_id == "acme"
    assert all(r.messages[0]["content"] == spec.instructions for r in requests)
    heads = [r.messages[1]["content"].rsplit("Task: ", 1)[0] for r in requests[1:]]
    assert len(set(heads)) == 1 and "$1,250,000" in heads[0]
    assert requests[1].messages[1]["content"].startswith(requests[0].messages[1]["content"].split("\n\nTask:")[0])

    html = (await service.export(task.document_id, "html", owner="acme")).data.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "{{ 7*7 }}" in html and "$1,250,000" in html
    word = docx.Document(io.BytesIO((await service.export(task.document_id, "docx", owner="acme")).data))
    text = "\n".join(p.text for p in word.paragraphs) + "\n".join(
        c.text for t in word.tables for row in t.rows for c in row.cells)
    assert HOSTILE in text and "12.5%" in text and "Market analysis" in text
    pdf = await service.export(task.document_id, "pdf", owner="acme")
    assert pdf.data.startswith(b"%PDF")
    md = (await service.export(task.document_id, "markdown", owner="acme")).data.decode()
    assert md == markdown


async def test_regenerate_keeps_every_version(service: BulService) -> None:
    task = await service.submit(plan(length="short"), owner="acme")
    await wait_finished(service, task.id)
    again = await service.regenerate(task.document_id, 2, RegenerateRequest(guidance="shorter"), owner="acme")
    done = await wait_finished(service, again.id)
    assert done.status is TaskStatus.COMPLETED and done.version == 2
    document, versions, tasks = await service.document(task.document_id, owner="acme")
    assert document.current_version == 2 and [v.version for v in versions] == [1, 2] and len(tasks) == 2
    assert versions[0].sections[:2] == versions[1].sections[:2]
    assert service.llm.requests[-1].temperature > 0 and "Guidance: shorter" in service.llm.requests[-1].messages[1][
        "content"]
    old = (await service.export(task.document_id, "markdown", owner="acme", version=1)).data.decode()
    assert old == versions[0].markdown
    with pytest.raises(DocumentNotFoundError):
        await service.regenerate(task.document_id, 99, RegenerateRequest(), owner="acme")


async def test_other_tenants_see_nothing(service: BulService) -> None:
    task = await service.submit(plan(), owner="acme")
    await wait_finished(service, task.id)
    with pytest.raises(TaskNotFoundError):
        await service.get(task.id, owner="globex")
    with pytest.raises(DocumentNotFoundError):
        await service.document(task.document_id, owner="globex")
    with pytest.raises(DocumentNotFoundError):
        await service.export(task.document_id, "pdf", owner=None)


async def test_bad_requests_store_nothing(service: BulService, database: Database) -> None:
    with pytest.raises(UnknownDocumentTypeError, match="business_plan"):
        await service.submit(GenerateRequest(query="x", document_type="poem"), owner="acme")
    with pytest.raises(InvalidRequestError, match="figures"):
        await service.submit(GenerateRequest(query="x", document_type="proposal", inputs={"figures": 3}), owner="a")
    with pytest.raises(InvalidRequestError, match="unknown_field"):
        await service.submit(GenerateRequest(query="x", document_type="sop", inputs={"unknown_field": 1}), owner="a")
    with pytest.raises(InputTooLargeError):
        await service.submit(GenerateRequest(query="x", inputs={"notes": "n" * 9000}), owner="acme")
    assert await database.fetch_value("SELECT COUNT(*) FROM bul_documents") == 0
    assert await database.fetch_value("SELECT COUNT(*) FROM bul_tasks") == 0


async def test_a_failed_llm_call_fails_the_task_with_its_reason(database: Database) -> None:
    def timing_out(spec: LLMRequestSpec):
        return LLMTimeout("the LLM did not finish within 1 s") if spec.json_schema is None else script(spec)

    service = BulService(db=database, llm=ScriptedLLM(timing_out))
    await service.start()
    try:
        task = await service.submit(plan(), owner="acme")
        done = await wait_finished(service, task.id)
        assert done.status is TaskStatus.FAILED and "did not finish within 1 s" in done.error
        with pytest.raises(DocumentNotReadyError):
            await service.export(task.document_id, "pdf", owner="acme")
    finally:
        await service.close()


async def test_cancel_stops_a_running_task(database: Database) -> None:
    gate = asyncio.Event()

    class Slow(ScriptedLLM):
        async def generate(self, spec):
            await gate.wait()
            return await super().generate(spec)

    service = BulService(db=database, llm=Slow(script))
    await service.start()
    try:
        task = await service.submit(plan(), owner="acme")
        await asyncio.sleep(0.05)
        cancelled = await service.cancel(task.id, owner="acme")
        assert cancelled.status is TaskStatus.CANCELLED
        gate.set()
        await asyncio.sleep(0.05)
        assert (await service.get(task.id, owner="acme")).status is TaskStatus.CANCELLED
        assert await database.fetch_value("SELECT COUNT(*) FROM bul_versions") == 0
    finally:
        await service.close()


def test_every_type_renders_and_publishes_a_schema() -> None:
    from business_modules.bul.assembly import SectionText, render_markdown

    assert len(DOCUMENT_TYPES) >= 8
    for spec in DOCUMENT_TYPES:
        inputs = spec.inputs.model_validate({"company_name": "ACME", "figures": [{"label": "a", "value": "1"}]})
        text = render_markdown(spec, title="T", inputs=inputs,
                               sections=[SectionText(s.heading, "body") for s in spec.sections])
        assert text.startswith("# T\n") and all(f"## {s.heading}" in text for s in spec.sections)
        assert json.dumps(spec.input_schema())


def test_escape_keeps_figures_and_makes_markup_literal() -> None:
    assert escape_markdown("$1,250,000 and 12.5%") == "$1,250,000 and 12.5%"
    assert escape_markdown("<b>x</b> & *y*") == "\\<b\\>x\\</b\\> \\& \\*y\\*"
    assert escape_markdown("# not a heading") == "\\# not a heading"


async def test_two_regenerations_finishing_together_get_distinct_versions(database: Database) -> None:
    """Each completion reads the latest version under the document's row lock: no duplicate, no lost version."""
    import time
    import uuid

    from business_modules.bul import repository as repo
    from business_modules.bul.models import TaskKind, TaskStatus

    now = time.time()
    doc = repo.Document(id=uuid.uuid4().hex, owner="acme", document_type="business_plan", title="t",
                        request_json="{}", outline=None, current_version=0, created_at=now, updated_at=now)
    await repo.insert_document(database, doc)
    tasks = []
    for index in range(4):
        task = repo.Task(id=uuid.uuid4().hex, document_id=doc.id, owner="acme", kind=TaskKind.REGENERATE,
                         section_index=index, request_json="{}", status=TaskStatus.QUEUED, priority=1, progress=[],
                         created_at=now, updated_at=now, runner_id="r1")
        await repo.insert_task(database, task)
        assert await repo.claim(database, task.id, runner_id="r1", attempt_id=f"a{index}", now=now,
                                lease_until=now + 60)
        tasks.append(task)
    versions = await asyncio.gather(*(
        repo.complete_with_version(database, task, attempt_id=f"a{index}", sections=[], markdown=f"v{index}",
                                   progress=[], now=now) for index, task in enumerate(tasks)))
    assert sorted(versions) == [1, 2, 3, 4]
    assert [v.version for v in await repo.versions_of(database, doc.id)] == [1, 2, 3, 4]
    assert (await repo.get_document(database, doc.id)).current_version == 4


@pytest.mark.parametrize(("text", "reason", "expected"), [
    ("One. Two is longer. Three cut mi", "length", "One. Two is longer."),
    ("1. **Assess**: Start by tracking cash.\n\n2. Next", "length", "1. **Assess**: Start by tracking cash."),
    ("One long sentence the budget cut in the mid", "length", "One long sentence the budget cut in the mid"),
    ("Short. Then a much longer fragment that the budget cut somewhere in its middle", "length",
     "Short. Then a much longer fragment that the budget cut somewhere in its middle"),
    ("Finished without a period", "stop", "Finished without a period"),
])
def test_a_sentence_cut_by_the_token_budget_is_dropped(text: str, reason: str, expected: str) -> None:
    from business_modules.bul.assembly import section_body

    assert section_body(text, reason) == expected
