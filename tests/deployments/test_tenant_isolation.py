"""One sweep of every by-id route through the gateway: another tenant learns nothing and changes nothing.

Tenant acme creates a corpus with a document (redundancy) and an export job.
Tenant globex then calls every route of those services that the gateway's
OpenAPI documents with a path parameter, with every documented method, on
acme's names and ids, and on names and ids that exist nowhere. The two
answers must be the same (status and error code): a 404 on one and a 403 or
200 on the other would tell globex that acme's record exists. Afterwards
acme's records read exactly as before. BUL, Gamma and Agents records are
swept the same way by their own API tests (tests/deployments/test_bul_api.py,
test_gamma_api.py, test_agents_api.py), which need the LLM to create them.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest

from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
from business_modules.export import repository as _export_repository  # noqa: F401 - registers export migrations
from deployments.app_builder import build_gateway
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import ServeInstance, run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

pytestmark = [pytest.mark.ray, pytest.mark.security]

SECRET = "tenant-sweep-test-secret-0123456789-abcdefgh"
SERVICES = ("redundancy", "export")
CORPUS = "board-minutes"


@pytest.fixture(scope="module")
def env(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory):
    from ray import serve

    from deployments.export import build_export
    from deployments.redundancy import build_redundancy

    schema = unique_schema("sweep")
    prefix = f"test-sweep-{uuid.uuid4().hex[:8]}"
    database = {"database_url": TEST_DATABASE_URL, "database_schema": schema}
    settings = {"blatam_env": "test", "secret_key": SECRET, **database, "redis_url": TEST_REDIS_URL,
                "rate_limit_key_prefix": prefix, "rate_limit_default": "100000/minute",
                # the sweep reads its routes from /openapi.json: a schema fetch that misses the 2-s default under
                # CI's load would leave a service out of the document and of the sweep
                "gateway_openapi_timeout_s": 60}
    run_app(build_redundancy(dict(database)), name="redundancy", route_prefix=None)
    run_app(build_export({**database, "data_dir": str(tmp_path_factory.mktemp("sweep-export"))}), name="export",
            route_prefix=None)
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET, users={
        "ann": ("acme", "redundancy export"), "bo": ("globex", "redundancy export")}))
    try:
        yield serve_instance.base_url, {"acme": {"X-API-Key": keys["ann"]}, "globex": {"X-API-Key": keys["bo"]}}
    finally:
        for app in ("gateway", "export", "redundancy"):
            serve.delete(app)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def _acme_records(http: httpx.Client, acme: dict[str, str]) -> dict[str, str]:
    """Create acme's records; the values each path parameter takes for them."""
    assert http.post("/api/v1/redundancy/corpora", headers=acme, json={"name": CORPUS}).status_code == 201
    stored = http.post(f"/api/v1/redundancy/corpora/{CORPUS}/documents", headers=acme, json={"documents": [
        {"text": "Acme's confidential board minutes: the merger closes in May.", "name": "minutes"}]})
    assert stored.status_code == 201, stored.text
    job = http.post("/api/v1/export", headers=acme, json={"content": {"title": "Acme plan", "sections": [
        {"heading": "Secret", "content": "Acme's plan."}]}, "format": "markdown"})
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    while http.get(f"/api/v1/export/{job.json()['task_id']}/status", headers=acme).json()["status"] != "completed":
        assert time.monotonic() < deadline, "acme's export job did not complete"
        time.sleep(0.2)
    return {"name": CORPUS, "doc_id": stored.json()["documents"][0]["id"], "task_id": job.json()["task_id"]}


def _fill(path: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"no value for {{{match.group(1)}}} in {path}: add one to the sweep"
        return values[match.group(1)]

    return re.sub(r"\{([^}]+)\}", value, path)


def _snapshot(http: httpx.Client, acme: dict[str, str], ids: dict[str, str]) -> list[tuple[int, bytes]]:
    reads = [f"/api/v1/redundancy/corpora/{CORPUS}", f"/api/v1/redundancy/corpora/{CORPUS}/documents/{ids['doc_id']}",
             f"/api/v1/export/{ids['task_id']}/status", f"/api/v1/export/{ids['task_id']}/download"]
    answers = [http.get(path, headers=acme) for path in reads]
    return [(a.status_code, re.sub(rb'"updated_at":"[^"]*"', b"", a.content)) for a in answers]


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json().get("error", {}).get("code")
    except ValueError:
        return None


def test_another_tenant_learns_nothing_and_changes_nothing(env) -> None:
    base_url, tenant = env
    with httpx.Client(base_url=base_url, timeout=60) as http:
        ids = _acme_records(http, tenant["acme"])
        before = _snapshot(http, tenant["acme"], ids)
        missing = {"name": "no-such-corpus", "doc_id": uuid.uuid4().hex, "task_id": str(uuid.uuid4())}
        document = http.get("/openapi.json").json()
        swept, leaks = [], []
        for path, operations in document["paths"].items():
            if not path.startswith(tuple(f"/api/v1/{s}/" for s in SERVICES)) or "{" not in path:
                continue
            for method in (m.upper() for m in operations if m.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}):
                body = {} if method in {"POST", "PUT", "PATCH"} else None
                theirs = http.request(method, _fill(path, ids), headers=tenant["globex"], json=body)
                nobody = http.request(method, _fill(path, missing), headers=tenant["globex"], json=body)
                swept.append(f"{method} {path}")
                if (theirs.status_code, _error_code(theirs)) != (nobody.status_code, _error_code(nobody)):
                    leaks.append(f"{method} {path}: acme's -> {theirs.status_code} {theirs.text[:120]}; "
                                 f"nobody's -> {nobody.status_code} {nobody.text[:120]}")
                if "Acme" in theirs.text or "confidential" in theirs.text:  # acme's content, whatever the status
                    leaks.append(f"{method} {path}: globex got {theirs.status_code} {theirs.text[:120]}")
        assert len(swept) >= 10, swept  # corpora, documents, duplicates, report, search, export status/download
        assert not leaks, "\n".join(leaks)
        assert _snapshot(http, tenant["acme"], ids) == before  # globex's DELETEs and POSTs changed nothing
