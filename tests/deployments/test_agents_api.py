"""The agents application end to end: through the gateway with API keys, thinking with the real `llm`
application on the demo model (tool calls grammar-enforced, so its random choices are valid calls), its tools
calling the real redundancy, export and bul applications as the run's tenant, stored in PostgreSQL.

The demo model's choices are random, so these tests check what must hold
whatever it chooses: every step stored, the result valid against the
capability's output schema, each step after the first served mostly from the
KV cache, approvals before side effects, tenants apart, and a restarted
replica resuming a run without repeating a side effect.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import jsonschema
import pytest

from business_modules.agents import catalogue
from business_modules.agents.tools.exports import ExportArgs
from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
from business_modules.storage import open_database
from deployments.agents import build_agents
from deployments.app_builder import build_gateway
from deployments.bul import build_bul
from deployments.export import build_export
from deployments.llm import build_llm
from deployments.redundancy import build_redundancy
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema
from tests.deployments.sse_support import read_events

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LLM_APP = "agents-test-llm"
# Blocks of 32 tokens: a shard of its own. The node's shard for the demo model in 16-token blocks is shared
# with every other test app of this Ray cluster and sized by whichever made it first (16 MB: 2,048 tokens),
# so with 16 the cached share below depended on the test order (2,048 of 4,949 tokens run after
# test_llm_handle_client).
LLM_ARGS = {"max_model_len": 4096, "max_batch_size": 4, "max_tokens_limit": 1024, "num_cpus": 2,
            "cache": {"enable_distributed": True, "block_size": 32, "max_memory_mb": 256}}
AGENT_SETTINGS = {"run_heartbeat_s": 1, "run_lease_s": 4, "llm_timeout_s": 120, "document_timeout_s": 120}
SECRET = "agents-gateway-test-secret-0123456789-abcdefgh"
WAIT_S = 300.0
NOTES = [("q3-review", "Bakery sales in Lyon grew 12% in Q3; croissants and sourdough sold out by noon."),
         ("pricing", "Our pricing memo: raise the sourdough price by 5% and bundle coffee with pastries.")]
PUBLISHER = {
    "id": "acme_publisher", "name": "Acme Publisher", "description": "Publishes short notes as files.",
    "business_area": "marketing",
    "capabilities": [{
        "name": "publish", "description": "Export a short note as a file, then summarise it.",
        "instructions": "Export a note about the topic with export_result, then give a one-line summary.",
        "input_schema": {"type": "object", "required": ["topic"], "additionalProperties": False,
                         "properties": {"topic": {"type": "string", "maxLength": 100}}},
        "output_schema": {"type": "object", "required": ["summary"], "additionalProperties": False,
                          "properties": {"summary": {"type": "string", "maxLength": 60}}},
        "tools": ["export_result"], "start_with": "export_result"}]}
WRITER = {**PUBLISHER, "id": "acme_writer", "name": "Acme Writer", "capabilities": [{
    **PUBLISHER["capabilities"][0], "name": "write", "description": "Write a document, then summarise it.",
    "instructions": "Write the document with write_document, then give a one-line summary.",
    "tools": ["write_document"], "start_with": "write_document"}]}


@dataclass(frozen=True)
class Env:
    base_url: str
    keys: dict[str, str]
    schema: str
    agents_args: dict

    def count(self, sql: str, **params) -> int:
        async def run() -> int:
            db = await open_database(TEST_DATABASE_URL, schema=self.schema, components=[])
            try:
                return int(await db.fetch_value(sql, params))
            finally:
                await db.close()
        return asyncio.run(run())


@pytest.fixture(scope="module")
def env(serve_instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from ray import serve

    schema = unique_schema("agentsgw")
    prefix = f"test-agentsgw-{uuid.uuid4().hex[:8]}"
    database = {"database_url": TEST_DATABASE_URL, "database_schema": schema}
    run_app(build_llm(LLM_ARGS), name=LLM_APP, route_prefix=f"/{LLM_APP}")
    run_app(build_redundancy(database), name="redundancy", route_prefix="/redundancy")
    run_app(build_export({**database, "data_dir": str(tmp_path_factory.mktemp("agents-export"))}), name="export",
            route_prefix="/export")
    run_app(build_bul({**database, "llm_app": LLM_APP, "settings": {"section_tokens_short": 48}}), name="bul",
            route_prefix="/bul")
    # The tools' calls get the model's bound too: under CI's load (load average 14 on 2 cores) a corpus search
    # once took over the default 20 s, failing the step with a (correct) ToolUnavailable.
    agents_args = {**database, "llm_app": LLM_APP, "service_timeout_s": 120, "settings": AGENT_SETTINGS}
    run_app(build_agents(agents_args), name="agents", route_prefix="/agents")
    settings = {"blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL,
                "database_schema": schema, "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix,
                "rate_limit_default": "1000/minute", "gateway_request_timeout_s": 120}
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET, users={
        "ann": ("acme", "agents redundancy export bul"), "bo": ("globex", "agents export")}))
    ann = {"X-API-Key": keys["ann"]}
    with httpx.Client(base_url=serve_instance.base_url, timeout=60) as http:
        assert http.post("/api/v1/redundancy/corpora", headers=ann, json={"name": "acme-notes"}).status_code == 201
        added = http.post("/api/v1/redundancy/corpora/acme-notes/documents", headers=ann, json={
            "documents": [{"name": name, "text": text} for name, text in NOTES]})
        assert added.status_code == 201, added.text
    try:
        yield Env(serve_instance.base_url, keys, schema, agents_args)
    finally:
        for name in ("gateway", "agents", "bul", "export", "redundancy", LLM_APP):
            serve.delete(name)
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["request_id"], body


def wait_run(http: httpx.Client, run_id: str, headers: dict, *, until=("completed", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        response = http.get(f"/api/v1/agents/runs/{run_id}", headers=headers)
        if response.status_code == 200:
            run = response.json()
            if run["status"] in until or time.monotonic() > deadline:
                return run
        elif response.status_code != 503 or time.monotonic() > deadline:  # 503: the app is being redeployed
            raise AssertionError(response.text)
        time.sleep(0.3)


def model_steps(run: dict) -> list[dict]:
    return [s for s in run["steps"] if s["kind"] == "model"]


def test_a_grounded_run_through_the_gateway_on_the_demo_model(env: Env) -> None:
    ann, bo = {"X-API-Key": env.keys["ann"]}, {"X-API-Key": env.keys["bo"]}
    output_schema = catalogue()["marketing_001"].capability("market_analysis").output_schema
    body = {"inputs": {"market": "neighbourhood bakeries", "region": "Lyon"},
            "parameters": {"max_steps": 3, "wait_s": 0, "seed": 7}}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S) as http:
        accepted = http.post("/api/v1/agents/agents/marketing_001/capabilities/market_analysis/execute",
                             headers=ann, json=body)
        assert accepted.status_code == 202, accepted.text
        execution = accepted.json()
        assert execution["status"] in ("queued", "running") and execution["result"] is None
        assert execution["events_url"] == f"/api/v1/agents/runs/{execution['run_id']}/events"
        events = read_events(http, execution["events_url"], ann)
        assert events[-1][0] == "end" and events[-1][1]["status"] == "completed", events[-1]
        run = http.get(execution["run_url"], headers=ann).json()

        assert run["tools"] == ["search_documents", "calculate"]
        streamed = [e["index"] for name, e in events if name == "step"]
        assert sorted(set(streamed)) == [s["index"] for s in run["steps"]]  # every step was streamed
        first_call = run["steps"][0]["model"]["tool_calls"][0]
        assert first_call["name"] == "search_documents"  # the capability starts from the tenant's documents
        assert first_call["arguments"]["corpus"] == "acme-notes"  # the only corpus acme has: the grammar held it
        search = run["steps"][1]
        assert search["tool"] == "search_documents" and search["status"] == "completed", search["error"]
        assert {m["name"] for m in search["result"]["matches"]} <= {name for name, _ in NOTES}
        final = run["steps"][-1]
        assert final["tool"] == "final_answer" and final["status"] == "completed"
        assert run["result"] == final["result"]
        jsonschema.validate(run["result"], output_schema)
        assert 2 <= run["steps_used"] <= 3 and len(model_steps(run)) == run["steps_used"]
        later = model_steps(run)[1:]
        # each step repeats the run's history: everything before the newest turn comes from the KV cache
        assert all(s["model"]["cached_tokens"] > 0 for s in later), later
        assert sum(s["model"]["cached_tokens"] for s in later) / sum(s["model"]["prompt_tokens"] for s in later) > 0.7
        assert run["usage"]["prompt_tokens"] == sum(s["model"]["prompt_tokens"] for s in model_steps(run))

        assert_error(http.get(execution["run_url"], headers=bo), 404, "run_not_found")
        assert_error(http.get(execution["events_url"], headers=bo), 404, "run_not_found")
        theirs = http.post("/api/v1/agents/agents/marketing_001/capabilities/market_analysis/execute",
                           headers=bo, json={**body, "parameters": {"max_steps": 2, "wait_s": 50}})
        assert theirs.status_code in (200, 202), theirs.text
        theirs = wait_run(http, theirs.json()["run_id"], bo)
        assert theirs["status"] == "completed" and theirs["tools"] == ["calculate"]  # globex has no corpora
        assert [r["run_id"] for r in http.get("/api/v1/agents/runs", headers=bo).json()["runs"]] == [
            theirs["run_id"]]


def test_a_tenant_agent_waits_for_approval_and_exports_for_its_tenant(env: Env) -> None:
    ann, bo = {"X-API-Key": env.keys["ann"]}, {"X-API-Key": env.keys["bo"]}
    execute = "/api/v1/agents/agents/acme_publisher/capabilities/publish/execute"
    body = {"inputs": {"topic": "Our new sourdough"}, "parameters": {"max_steps": 2, "wait_s": 50}}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S) as http:
        created = http.post("/api/v1/agents/agents", headers=ann, json=PUBLISHER)
        assert created.status_code == 201, created.text
        assert created.json()["builtin"] is False and created.json()["capabilities"][0]["tools"][0]["side_effects"]
        assert_error(http.get("/api/v1/agents/agents/acme_publisher", headers=bo), 404, "agent_not_found")
        assert "acme_publisher" not in [a["agent_id"] for a in http.get("/api/v1/agents/agents", headers=bo).json()]
        assert_error(http.post(execute, headers=bo, json=body), 404, "agent_not_found")

        waiting = http.post(execute, headers=ann, json=body)
        assert waiting.status_code == 202 and waiting.json()["status"] == "awaiting_approval", waiting.text
        pending = waiting.json()["pending_approval"]
        assert pending["tool"] == "export_result"
        ExportArgs.model_validate(pending["arguments"])  # the grammar made the demo model's call valid
        run_id = waiting.json()["run_id"]
        assert env.count("SELECT COUNT(*) FROM export_jobs WHERE owner = :o", o="acme") == 0  # nothing yet
        assert_error(http.post(pending["approve_url"], headers=bo), 404, "run_not_found")
        approved = http.post(pending["approve_url"], headers=ann)
        assert approved.status_code == 200, approved.text
        run = wait_run(http, run_id, ann)
        assert run["status"] == "completed", run
        export = run["steps"][1]
        assert export["tool"] == "export_result" and export["status"] == "completed", export
        status_url = f"/api/v1/export/{export['result']['task_id']}/status"
        assert http.get(status_url, headers=ann).status_code == 200  # a real export job of acme's ...
        assert_error(http.get(status_url, headers=bo), 404, "job_not_found")  # ... that globex cannot see
        assert env.count("SELECT COUNT(*) FROM export_jobs WHERE owner = :o", o="acme") == 1
        assert_error(http.post(pending["approve_url"], headers=ann), 409, "not_awaiting_approval")

        refused = http.post(execute, headers=ann, json=body).json()
        assert refused["status"] == "awaiting_approval"
        rejected = http.post(refused["pending_approval"]["reject_url"], headers=ann, json={"reason": "not today"})
        assert rejected.status_code == 200, rejected.text
        refused = wait_run(http, refused["run_id"], ann)
        assert refused["steps"][1]["status"] == "rejected" and refused["steps"][1]["error"] == "not today"
        assert refused["status"] in ("completed", "failed"), refused  # the model was told, the run went on

        dropped = http.post(execute, headers=ann, json=body).json()
        cancelled = http.post(f"/api/v1/agents/runs/{dropped['run_id']}/cancel", headers=ann)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert_error(http.post(f"/api/v1/agents/runs/{dropped['run_id']}/cancel", headers=ann), 409, "run_finished")
        assert env.count("SELECT COUNT(*) FROM export_jobs WHERE owner = :o", o="acme") == 1


def test_a_restarted_replica_resumes_the_run_without_repeating_its_side_effect(env: Env) -> None:
    from ray import serve

    ann = {"X-API-Key": env.keys["ann"]}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S) as http:
        assert http.post("/api/v1/agents/agents", headers=ann, json=WRITER).status_code == 201
        waiting = http.post("/api/v1/agents/agents/acme_writer/capabilities/write/execute", headers=ann, json={
            "inputs": {"topic": "Opening a second bakery"}, "parameters": {"max_steps": 2, "wait_s": 50}})
        assert waiting.json()["status"] == "awaiting_approval", waiting.text
        run_id = waiting.json()["run_id"]
        assert http.post(waiting.json()["pending_approval"]["approve_url"], headers=ann).status_code == 200
        # once the BUL document is being written (the call's intent is stored), restart the agents replica
        deadline = time.monotonic() + 60
        during = wait_run(http, run_id, ann, until=("running", "completed", "failed"))
        while during["steps"][1]["status"] == "approved" and time.monotonic() < deadline:
            time.sleep(0.1)
            during = wait_run(http, run_id, ann, until=("running", "completed", "failed"))
        run_app(build_agents({**env.agents_args, "settings": {**AGENT_SETTINGS, "default_wait_s": 9}}),
                name="agents", route_prefix="/agents")
        assert serve.status().applications["agents"].status == "RUNNING"
        run = wait_run(http, run_id, ann)
        assert run["status"] == "completed", run
        write = run["steps"][1]
        assert write["tool"] == "write_document" and write["status"] in ("interrupted", "completed"), write
        if write["status"] == "interrupted":  # it was in flight when the replica stopped: not called again
            assert "not called again" in write["error"]
        assert during["status"] in ("running", "completed")
        assert env.count("SELECT COUNT(*) FROM bul_documents WHERE owner = :o", o="acme") == 1
        assert [s["index"] for s in run["steps"]] == list(range(len(run["steps"])))


def test_bad_requests_are_uniform_4xx_and_the_original_route_works(env: Env) -> None:
    ann = {"X-API-Key": env.keys["ann"]}
    base = "/api/v1/agents/agents"
    forecast = {"inputs": {"pipeline": [{"deal": "Globex", "value": 1000, "probability": 0.5}]},
                "parameters": {"max_steps": 2, "wait_s": 50}}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S) as http:
        agents = http.get(base, headers=ann).json()
        assert {"marketing_001", "sales_001", "operations_001", "hr_001", "finance_001"} <= {
            a["agent_id"] for a in agents}
        assert_error(http.post(f"{base}/nobody/capabilities/x/execute", headers=ann, json={}), 404, "agent_not_found")
        assert_error(http.post(f"{base}/sales_001/capabilities/cold_calls/execute", headers=ann, json={}), 404,
                     "capability_not_found")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", headers=ann,
                               json={"inputs": {"pipeline": "lots"}}), 422, "invalid_inputs")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", headers=ann,
                               json={**forecast, "parameters": {"max_steps": 999}}), 422, "invalid_inputs")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", headers=ann,
                               json={**forecast, "inputz": {}}), 422, "validation_error")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", headers=ann,
                               json={"inputs": {"pipeline": [], "x": "y" * 9000}}), 413, "content_too_large")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", content=b"{",
                               headers={**ann, "content-type": "application/json"}), 400, "malformed_json")
        assert_error(http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", content=b" " * 70_000,
                               headers={**ann, "content-type": "application/json"}), 413, "payload_too_large")
        assert_error(http.post(base, headers=ann, json={**PUBLISHER, "id": "sales_001"}), 409, "agent_exists")
        unbounded = json.loads(json.dumps(PUBLISHER))
        unbounded["id"] = "acme_unbounded"
        unbounded["capabilities"][0]["output_schema"]["properties"]["summary"].pop("maxLength")
        assert_error(http.post(base, headers=ann, json=unbounded), 422, "validation_error")
        assert_error(http.delete(f"{base}/sales_001", headers=ann), 409, "builtin_agent")
        assert_error(http.get("/api/v1/agents/runs/not-a-run", headers=ann), 404, "run_not_found")
        assert http.post(f"{base}/sales_001/capabilities/sales_forecast/execute", json=forecast).status_code == 401

        # the original Business Agents route, through the original Integration System's generic route
        routed = http.post("/api/v1/gateway/route", headers=ann, json={
            "target_system": "business_agents", "method": "POST", "data": forecast,
            "endpoint": "/business-agents/agents/sales_001/capabilities/sales_forecast/execute"})
        assert routed.status_code == 200, routed.text
        answer = routed.json()["response"]
        assert {"status", "agent_id", "capability", "result", "error", "execution_time", "run_id"} <= set(answer)
        assert answer["agent_id"] == "sales_001" and answer["capability"] == "sales_forecast"
        run = wait_run(http, answer["run_id"], ann)
        assert run["status"] == "completed", run
        jsonschema.validate(run["result"], catalogue()["sales_001"].capability("sales_forecast").output_schema)
