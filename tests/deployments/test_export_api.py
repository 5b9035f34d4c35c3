"""The export application over real HTTP on a local Serve instance (PostgreSQL
in a private schema), and through the gateway's forwarding protocol."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator

import docx
import httpx
import pptx
import pypdf
import pytest

from business_modules.export import THEMES, JobStatus
from business_modules.export import repository as repo
from business_modules.export.repository import ExportJob
from business_modules.storage import open_database
from tests.business_modules.export_samples import SECTION_TITLES, UNICODE, structured_payload
from tests.conftest import TEST_DATABASE_URL
from tests.deployments.conftest import run_app
from tests.storage_fixtures import drop_schema, unique_schema

pytestmark = pytest.mark.ray

MAX_BODY_BYTES = 2 * 1024 * 1024
JOB_WAIT_S = 90.0


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    name = unique_schema("export")
    yield name
    asyncio.run(drop_schema(TEST_DATABASE_URL, name))


@pytest.fixture(scope="module")
def base_url(serve_instance, schema: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from deployments.export import build_export

    data_dir = tmp_path_factory.mktemp("export-data")
    run_app(
        build_export({"database_url": TEST_DATABASE_URL, "database_schema": schema, "data_dir": str(data_dir),
                      "max_body_bytes": MAX_BODY_BYTES}),
        name="export",
        route_prefix="/export",
    )
    yield f"{serve_instance.base_url}/export"
    serve.delete("export")


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message", "request_id"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"] and body["error"]["request_id"]
    return body["error"]


def wait_done(client: httpx.Client, task_id: str) -> dict:
    deadline = time.monotonic() + JOB_WAIT_S
    seen = set()
    while True:
        status = client.get(f"/{task_id}/status")
        assert status.status_code == 200, status.text
        body = status.json()
        seen.add(body["status"])
        assert body["status"] in {"queued", "running", "completed", "failed"}
        if body["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def create(client: httpx.Client, fmt: str, **extra) -> dict:
    response = client.post("/", json=structured_payload(fmt=fmt, **extra))
    assert response.status_code == 202, response.text
    return response.json()


LATIN = "Café – Ünïcödé – Ærøskøbing"
PDF_MARKDOWN = f"""# Report {LATIN}

## Overview

Some text with **bold** words.

- first item
- second item

## Figures

| City | Count |
|------|------:|
| Zürich | 12 |
| Malmö | 7 |
"""


def test_pdf_job_create_status_download(client: httpx.Client) -> None:
    # Latin-only text, so this runs without a CJK font (the CJK PDF read-back is in
    # tests/business_modules/test_export_render.py).
    response = client.post("/", json={"content": PDF_MARKDOWN, "format": "pdf",
                                       "metadata": {"author": "Zoë Ångström", "keywords": "a, b"}})
    assert response.status_code == 202, response.text
    accepted = response.json()
    task_id = accepted["task_id"]
    assert accepted["status"] in ("queued", "running", "completed")
    assert accepted["download_url"] == f"/export/{task_id}/download"
    assert accepted["status_url"] == f"/export/{task_id}/status"
    status = wait_done(client, task_id)
    assert status["status"] == "completed", status
    assert 0 < status["quality_score"] <= 1 and status["download_url"] == accepted["download_url"]
    assert status["started_at"] and status["finished_at"] and status["expires_at"]

    download = client.get(f"/{task_id}/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/pdf"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Report-Cafe-Unicode-rskbing.pdf"'), disposition
    assert "filename*=utf-8''Report-Caf%C3%A9" in disposition
    assert int(download.headers["content-length"]) == status["size_bytes"] == len(download.content)
    reader = pypdf.PdfReader(io.BytesIO(download.content))
    text = "\n".join(page.extract_text() for page in reader.pages)
    for expected in ("Overview", "Figures", "first item", "second item", "Zürich", "Malmö", "12", LATIN,
                     "Contents", "Page 1 of"):
        assert expected in text, expected
    assert reader.metadata.title == f"Report {LATIN}" and reader.metadata.author == "Zoë Ångström"


def test_every_other_format_round_trips(client: httpx.Client) -> None:
    jobs = {fmt: create(client, fmt, theme="modern")["task_id"] for fmt in ("docx", "pptx", "html", "markdown")}
    files = {}
    for fmt, task_id in jobs.items():
        assert wait_done(client, task_id)["status"] == "completed"
        response = client.get(f"/{task_id}/download")
        assert response.status_code == 200
        files[fmt] = response
    assert files["docx"].headers["content-type"].endswith("wordprocessingml.document")
    document = docx.Document(io.BytesIO(files["docx"].content))
    assert [p.text for p in document.paragraphs if p.style.name == "Heading 1"] == SECTION_TITLES
    assert document.core_properties.author == "Zoë Ångström"
    assert files["pptx"].headers["content-type"].endswith("presentationml.presentation")
    deck = pptx.Presentation(io.BytesIO(files["pptx"].content))
    assert [s.shapes.title.text for s in deck.slides][2:] == SECTION_TITLES
    assert files["html"].headers["content-type"] == "text/html; charset=utf-8"
    html = files["html"].text
    assert THEMES["modern"].primary in html and "<script" not in html.split("<main>")[1]
    assert files["markdown"].headers["content-type"] == "text/markdown; charset=utf-8"
    assert files["markdown"].text.startswith(f"# Quarterly report {UNICODE}\n")
    assert files["markdown"].headers["content-disposition"].endswith(".md")


def test_jobs_that_are_not_done_cannot_be_downloaded(client: httpx.Client, schema: str) -> None:
    """Rows as another replica leaves them: one still running, one orphaned by a dead replica."""
    now = time.time()

    async def insert() -> None:
        db = await open_database(TEST_DATABASE_URL, schema=schema)
        try:
            base = dict(format="pdf", document_type="report", quality_level="professional", title="t", owner=None,
                        created_at=now, updated_at=now, status=JobStatus.RUNNING)
            await repo.insert_job(db, ExportJob(id="b" * 32, runner_id="live", lease_until=now + 600, **base),
                                  request_json="{}")
            await repo.insert_job(db, ExportJob(id="c" * 32, runner_id="dead", lease_until=now - 600, **base),
                                  request_json="{}")
        finally:
            await db.close()

    asyncio.run(insert())
    assert client.get(f"/{'b' * 32}/status").json()["status"] == "running"
    assert "is running" in assert_error(client.get(f"/{'b' * 32}/download"), 409, "job_not_ready")["message"]
    orphan = client.get(f"/{'c' * 32}/status").json()
    assert orphan["status"] == "failed" and orphan["error"].startswith("interrupted")
    assert "interrupted" in assert_error(client.get(f"/{'c' * 32}/download"), 409, "job_failed")["message"]


def test_bad_input_gets_clear_4xx(client: httpx.Client) -> None:
    assert_error(client.post("/", content=b'{"content": ', headers={"content-type": "application/json"}),
                 400, "malformed_json")
    assert_error(client.post("/", json={"content": 42}), 422, "validation_error")
    assert_error(client.post("/", json={"content": "   "}), 422, "validation_error")
    assert_error(client.post("/", json={"content": {"title": "T", "sections": [{"heading": ["x"]}]}}),
                 422, "validation_error")
    unknown = assert_error(client.post("/", json={"content": "x", "format": "odt"}), 422, "validation_error")
    assert "pdf" in unknown["message"]
    assert_error(client.post("/", json={"content": "x", "theme": "neon"}), 422, "validation_error")
    assert_error(client.post("/", json={"content": "x" * 200_001}), 413, "content_too_large")
    assert_error(client.post("/", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}),
                 413, "payload_too_large")
    assert_error(client.get(f"/{'0' * 32}/status"), 404, "job_not_found")
    assert_error(client.get("/not-a-job-id/download"), 404, "job_not_found")
    assert_error(client.get("/nope/nope/nope"), 404, "not_found")


def test_generate_returns_the_file_synchronously(client: httpx.Client) -> None:
    response = client.post("/generate", json={"content": f"# Notes\n\n## {UNICODE}\n\n- a\n- b\n", "format": "docx"})
    assert response.status_code == 200
    assert response.headers["content-disposition"].startswith('attachment; filename="Notes.docx"')
    assert 0 <= float(response.headers["x-quality-score"]) <= 1
    document = docx.Document(io.BytesIO(response.content))
    assert [p.text for p in document.paragraphs if p.style.name == "Heading 1"] == [UNICODE]
    html = client.post("/generate", json={"content": "<script>alert(1)</script>\n\nhi", "format": "html"})
    assert html.status_code == 200 and "<script" not in html.text.split("<main>")[1]


def test_validate_formats_themes_health(client: httpx.Client) -> None:
    report = client.post("/validate", json=structured_payload(fmt="pdf")).json()
    assert report["valid"] is True and report["sections"] == SECTION_TITLES and report["table_of_contents"]
    assert {f["format"] for f in client.get("/formats").json()} == {"pdf", "docx", "pptx", "html", "markdown"}
    assert {t["name"] for t in client.get("/themes").json()} == set(THEMES)
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["database"] == "ok"


def test_forwarded_jobs_belong_to_the_callers_tenant(client: httpx.Client, base_url: str) -> None:
    from ray import serve

    handle = serve.get_app_handle("export")

    async def forward(method: str, path: str, payload: object | None = None, tenant: str = "acme"):
        body = json.dumps(payload).encode() if payload is not None else b""
        return await handle.handle_request.remote(
            method, path, body=body, headers={"content-type": "application/json", "x-request-id": "req-42"},
            caller={"tenant": tenant, "subject": "alice", "scopes": ["export"]},
        )

    created = asyncio.run(forward("POST", "/", structured_payload(fmt="markdown")))
    assert created.status_code == 202, created.body
    accepted = json.loads(created.body)
    task_id = accepted["task_id"]
    assert accepted["download_url"] == f"/api/v1/export/{task_id}/download"  # the gateway's path
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        status = json.loads(asyncio.run(forward("GET", f"/{task_id}/status")).body)
        if status["status"] == "completed":
            break
        time.sleep(0.1)
    assert status["status"] == "completed"
    download = asyncio.run(forward("GET", f"/{task_id}/download"))
    assert download.status_code == 200 and download.body.decode().startswith("# Quarterly report")
    assert re.match(r"text/markdown", download.header("content-type") or "")
    other = asyncio.run(forward("GET", f"/{task_id}/status", tenant="globex"))
    assert other.status_code == 404 and json.loads(other.body)["error"]["request_id"] == "req-42"
    assert_error(client.get(f"/{task_id}/status"), 404, "job_not_found")  # direct callers see no tenant's jobs
