"""The original Export IA calls end to end through the gateway:
``POST /api/v1/export`` -> ``GET /api/v1/export/{id}/status`` -> ``GET /api/v1/export/{id}/download``,
authenticated with an API key, jobs scoped to the caller's tenant."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import docx
import httpx
import pytest

from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
from business_modules.export import repository as _export_repository  # noqa: F401 - registers export migrations
from deployments.app_builder import build_gateway
from tests.business_modules.export_samples import SECTION_TITLES, UNICODE, structured_payload
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

pytestmark = pytest.mark.ray

SECRET = "export-gateway-test-secret-0123456789-abcdefgh"
JOB_WAIT_S = 90.0


@pytest.fixture(scope="module")
def env(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory):
    from ray import serve

    from deployments.export import build_export

    schema = unique_schema("exgw")
    prefix = f"test-exgw-{uuid.uuid4().hex[:8]}"
    settings = {
        "blatam_env": "test",
        "secret_key": SECRET,
        "database_url": TEST_DATABASE_URL,
        "database_schema": schema,
        "redis_url": TEST_REDIS_URL,
        "rate_limit_key_prefix": prefix,
        "rate_limit_default": "1000/minute",
        "gateway_request_timeout_s": 60,
    }
    run_app(build_export({"database_url": TEST_DATABASE_URL, "database_schema": schema,
                          "data_dir": str(tmp_path_factory.mktemp("export-gw"))}),
            name="export", route_prefix="/export")
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")

    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                     users={"ann": ("acme", "export"), "bo": ("globex", "export")}))
    try:
        yield serve_instance.base_url, keys
    finally:
        serve.delete("gateway")
        serve.delete("export")
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def test_original_api_through_the_gateway(env) -> None:
    base_url, keys = env
    ann = {"X-API-Key": keys["ann"]}
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        created = http.post("/api/v1/export", json=structured_payload(fmt="docx"), headers=ann)
        assert created.status_code == 202, created.text
        accepted = created.json()
        task_id = accepted["task_id"]
        assert accepted["download_url"] == f"/api/v1/export/{task_id}/download"

        deadline = time.monotonic() + JOB_WAIT_S
        while True:
            status = http.get(f"/api/v1/export/{task_id}/status", headers=ann).json()
            if status["status"] in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status["status"] == "completed", status

        download = http.get(accepted["download_url"], headers=ann)
        assert download.status_code == 200
        assert download.headers["content-type"].endswith("wordprocessingml.document")
        assert "filename*=utf-8''Quarterly-report-Caf%C3%A9" in download.headers["content-disposition"]
        document = docx.Document(io.BytesIO(download.content))
        assert [p.text for p in document.paragraphs if p.style.name == "Heading 1"] == SECTION_TITLES
        assert document.core_properties.title == f"Quarterly report {UNICODE}"

        other = http.get(f"/api/v1/export/{task_id}/status", headers={"X-API-Key": keys["bo"]})
        assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found"
        assert http.get(f"/api/v1/export/{task_id}/status").status_code == 401
        bad = http.post("/api/v1/export", content=b"{", headers={**ann, "content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"


def test_original_root_readme_path_is_an_alias_of_export(env) -> None:
    """``POST /api/v1/exports/generate`` (the original root README) is the export service itself."""
    base_url, keys = env
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        generated = http.post("/api/v1/exports/generate", json=structured_payload(fmt="markdown"),
                              headers={"X-API-Key": keys["ann"]})  # a key scoped "export"
        assert generated.status_code == 200, generated.text
        assert "Quarterly report" in generated.content.decode()
        assert http.post("/api/v1/exports/generate", json=structured_payload(fmt="markdown")).status_code == 401
