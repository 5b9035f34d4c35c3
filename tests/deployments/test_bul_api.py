"""The bul application against the real `llm` deployment on the demo model: directly over HTTP
(SQLite), through the gateway with API keys (PostgreSQL), and with an LLM that is not there.

The demo model writes random words, so these tests check structure, progress,
cache hits, versions, exports and isolation, never prose.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator

import docx
import httpx
import pytest

from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
from business_modules.bul import get_document_type
from deployments.app_builder import build_gateway
from deployments.bul import build_bul
from deployments.llm import build_llm
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema
from tests.deployments.sse_support import read_events

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LLM_APP = "bul-test-llm"
LLM_ARGS = {"max_model_len": 2048, "max_batch_size": 8, "max_tokens_limit": 512,
            "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 64}}
FAST = {"section_tokens_short": 6, "section_tokens_medium": 8, "section_tokens_long": 12, "outline_note_chars": 8,
        "llm_timeout_s": 120}
SECRET = "bul-gateway-test-secret-0123456789-abcdefgh"
JOB_WAIT_S = 240.0
HOSTILE = "{{ 7*7 }} <script>alert(1)</script>"
INPUTS = {"company_name": f"Zoë Bakes {HOSTILE}", "industry": "Bakery",
          "figures": [{"label": "Revenue 2025", "value": "$1,250,000"}, {"label": "Margin", "value": "12.5%"}]}


@pytest.fixture(scope="module")
def apps(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from ray import serve

    schema = unique_schema("bulgw")
    prefix = f"test-bulgw-{uuid.uuid4().hex[:8]}"
    run_app(build_llm(LLM_ARGS), name=LLM_APP, route_prefix=f"/{LLM_APP}")
    run_app(build_bul({"data_dir": str(tmp_path_factory.mktemp("bul-sqlite")), "database_url": None,
                       "llm_app": LLM_APP, "settings": FAST}), name="bul-sqlite", route_prefix="/bul-sqlite")
    run_app(build_bul({"data_dir": str(tmp_path_factory.mktemp("bul-nollm")), "llm_app": "no-such-llm-app",
                       "settings": {**FAST, "llm_timeout_s": 10}}), name="bul-nollm", route_prefix="/bul-nollm")
    run_app(build_bul({"database_url": TEST_DATABASE_URL, "database_schema": schema, "llm_app": LLM_APP,
                       "settings": FAST}), name="bul", route_prefix="/bul")
    settings = {"blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL,
                "database_schema": schema, "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix,
                "rate_limit_default": "1000/minute", "gateway_request_timeout_s": 120}
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                     users={"ann": ("acme", "bul"), "bo": ("globex", "bul")}))
    try:
        yield {"base": serve_instance.base_url, "keys": keys}
    finally:
        for name in ("gateway", "bul", "bul-nollm", "bul-sqlite", LLM_APP):
            serve.delete(name)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["request_id"], body


def wait_done(http: httpx.Client, prefix: str, task_id: str, headers: dict | None = None) -> dict:
    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        body = http.get(f"{prefix}/tasks/{task_id}/status", headers=headers).json()
        if body["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_generate_stream_versions_and_exports_on_the_demo_model(apps) -> None:
    spec = get_document_type("business_plan")
    with httpx.Client(base_url=f"{apps['base']}/bul-sqlite", timeout=120) as http:
        types = http.get("/document-types").json()
        assert len(types) >= 8 and all("properties" in t["input_schema"] for t in types)
        created = http.post("/documents/generate", json={"query": "A plan for a bakery", "document_type":
                                                         "business_plan", "inputs": INPUTS, "length": "short"})
        assert created.status_code == 202, created.text
        accepted = created.json()
        events = read_events(http, f"/tasks/{accepted['task_id']}/events")
        assert events[-1][0] == "end" and events[-1][1]["status"] == "completed", events[-1]
        done_counts = [e["steps_done"] for _, e in events]
        assert done_counts == sorted(done_counts) and len(set(done_counts)) > 2  # progress, step by step
        status = events[-1][1]
        assert status["steps_total"] == 1 + len(spec.sections) and status["progress"] == 1.0
        sections = [e for e in status["sections"] if e["step"] == "section"]
        # the fixed instructions, inputs and outline are served from the KV cache for every section
        assert all(e["cached_tokens"] > 0 for e in sections), sections
        assert sum(e["cached_tokens"] for e in sections) / sum(e["prompt_tokens"] for e in sections) > 0.6

        document_id = accepted["document_id"]
        doc = http.get(f"/documents/{document_id}").json()
        assert doc["current_version"] == 1 and [s["heading"] for s in doc["versions"][0]["sections"]] == [
            s.heading for s in spec.sections]
        assert set(doc["outline"]) == {s.key for s in spec.sections}
        markdown = http.get(f"/documents/{document_id}/download", params={"format": "markdown"}).text
        assert "| Revenue 2025 | $1,250,000 |" in markdown and "| Margin | 12.5% |" in markdown
        html = http.get(f"/documents/{document_id}/download", params={"format": "html"}).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
        assert "{{ 7*7 }}" in html and "$1,250,000" in html
        word = http.get(f"/documents/{document_id}/download", params={"format": "docx"})
        cells = [c.text for t in docx.Document(io.BytesIO(word.content)).tables for r in t.rows for c in r.cells]
        assert f"Zoë Bakes {HOSTILE}" in cells and "12.5%" in cells
        pdf = http.get(f"/documents/{document_id}/download", params={"format": "pdf"})
        assert pdf.content.startswith(b"%PDF") and pdf.headers["content-type"] == "application/pdf"

        again = http.post(f"/documents/{document_id}/sections/1/regenerate", json={"guidance": "more detail"})
        assert again.status_code == 202, again.text
        redone = wait_done(http, "", again.json()["task_id"])
        assert redone["status"] == "completed" and redone["version"] == 2, redone
        doc = http.get(f"/documents/{document_id}").json()
        assert [v["version"] for v in doc["versions"]] == [1, 2] and doc["current_version"] == 2
        first, second = doc["versions"]
        assert first["sections"][0] == second["sections"][0] and first["sections"][2:] == second["sections"][2:]
        assert_error(http.post(f"/tasks/{accepted['task_id']}/cancel"), 409, "task_finished")


def test_the_original_query_route_and_cancel(apps) -> None:
    with httpx.Client(base_url=f"{apps['base']}/bul-sqlite", timeout=120) as http:
        created = http.post("/query", json={"query": "Write meeting minutes for the board", "priority": 2})
        assert created.status_code == 202, created.text
        assert created.json()["document_type"] == "meeting_minutes"
        task_id = created.json()["task_id"]
        cancelled = http.post(f"/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        time.sleep(1.0)
        assert http.get(f"/task/{task_id}/status").json()["status"] == "cancelled"
        assert_error(http.get(f"/documents/{created.json()['document_id']}/download"), 409, "document_not_ready")


def test_bad_input_is_a_clear_4xx_and_stores_nothing(apps) -> None:
    with httpx.Client(base_url=f"{apps['base']}/bul-sqlite", timeout=60) as http:
        assert_error(http.post("/documents/generate", json={"query": "x", "document_type": "sonnet"}), 422,
                     "unknown_document_type")
        assert_error(http.post("/documents/generate", json={"query": "x", "document_type": "proposal",
                                                            "inputs": {"budget": ["not", "a", "string"]}}), 422,
                     "invalid_inputs")
        assert_error(http.post("/documents/generate", json={"query": "x", "tone": "angry"}), 422, "validation_error")
        assert_error(http.post("/documents/generate", json={"query": "x" * 3000}), 413, "content_too_large")
        assert_error(http.post("/documents/generate", json={"query": "x", "inputs": {"notes": "n" * 9000}}), 413,
                     "content_too_large")
        assert_error(http.post("/documents/generate", content=b"{" + b" " * 70_000 + b"}",
                               headers={"content-type": "application/json"}), 413, "payload_too_large")
        assert_error(http.post("/documents/generate", content=b"{", headers={"content-type": "application/json"}),
                     400, "malformed_json")
        assert_error(http.get("/tasks/not-an-id/status"), 404, "task_not_found")
        assert_error(http.get(f"/documents/{uuid.uuid4().hex}"), 404, "document_not_found")


def test_an_unavailable_llm_fails_the_task_with_a_reason(apps) -> None:
    with httpx.Client(base_url=f"{apps['base']}/bul-nollm", timeout=60) as http:
        created = http.post("/documents/generate", json={"query": "An SOP for opening the shop"})
        assert created.status_code == 202, created.text
        status = wait_done(http, "", created.json()["task_id"])
        assert status["status"] == "failed" and status["error"].startswith("LLM call failed"), status


def test_through_the_gateway_with_api_keys_on_postgresql(apps) -> None:
    ann, bo = {"X-API-Key": apps["keys"]["ann"]}, {"X-API-Key": apps["keys"]["bo"]}
    with httpx.Client(base_url=apps["base"], timeout=120) as http:
        created = http.post("/api/v1/bul/documents/generate", headers=ann, json={
            "query": "Quarterly results commentary", "document_type": "financial_report_commentary",
            "inputs": {"period": "Q3 2026", "revenue": "€4.2M"}, "length": "short"})
        assert created.status_code == 202, created.text
        accepted = created.json()
        assert accepted["status_url"] == f"/api/v1/bul/tasks/{accepted['task_id']}/status"
        events = read_events(http, f"/api/v1/bul/tasks/{accepted['task_id']}/events", headers=ann)
        assert events[-1][1]["status"] == "completed", events[-1]
        document_url = f"/api/v1/bul/documents/{accepted['document_id']}"
        assert http.get(document_url, headers=ann).json()["current_version"] == 1
        word = http.get(f"{document_url}/download", params={"format": "docx"}, headers=ann)
        assert word.status_code == 200 and word.headers["content-type"].endswith("wordprocessingml.document")
        cells = [c.text for t in docx.Document(io.BytesIO(word.content)).tables for r in t.rows for c in r.cells]
        assert "Q3 2026" in cells and "€4.2M" in cells

        # another tenant's ids do not exist for it; no key is 401
        assert_error(http.get(accepted["status_url"], headers=bo), 404, "task_not_found")
        assert_error(http.get(document_url, headers=bo), 404, "document_not_found")
        assert_error(http.get(f"{document_url}/download", headers=bo), 404, "document_not_found")
        assert_error(http.post(f"{document_url}/sections/0/regenerate", headers=bo), 404, "document_not_found")
        assert_error(http.post(f"/api/v1/bul/tasks/{accepted['task_id']}/cancel", headers=bo), 404,
                     "task_not_found")
        assert http.get(document_url).status_code == 401
        # the direct route is not the caller's tenant either: unowned only
        assert_error(http.get(f"/bul/documents/{accepted['document_id']}"), 404, "document_not_found")
