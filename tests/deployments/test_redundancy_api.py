"""The redundancy application over real HTTP on a local Serve instance, and
through the gateway's forwarding protocol (a handle call with a caller)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deployments.conftest import run_app

pytestmark = pytest.mark.ray

CLOUGH = Path(__file__).resolve().parents[1] / "data" / "clough"
MAX_BODY_BYTES = 512 * 1024


def clough(name: str) -> str:
    raw = (CLOUGH / name).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


@pytest.fixture(scope="module")
def base_url(serve_instance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from deployments.redundancy import build_redundancy

    db = tmp_path_factory.mktemp("redundancy") / "redundancy.db"
    run_app(
        build_redundancy({"database_url": f"sqlite:///{db}", "max_body_bytes": MAX_BODY_BYTES}),
        name="redundancy",
        route_prefix="/redundancy",
    )
    yield f"{serve_instance.base_url}/redundancy"
    serve.delete("redundancy")


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120.0) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["message"] and body["error"]["request_id"]


def test_original_endpoints(client: httpx.Client) -> None:
    analyzed = client.post("/analyze", json={"content": "The cat and the hat. The end!", "threshold": 0.2}).json()
    assert (analyzed["word_count"], analyzed["unique_words"], analyzed["character_count"]) == (7, 5, 29)
    assert analyzed["redundancy_score"] == pytest.approx(2 / 7) and analyzed["is_redundant"] is True
    assert len(analyzed["content_hash"]) == 64 and analyzed["timestamp"]
    similar = client.post("/similarity", json={"text1": "the cat sat", "text2": "The cat sat down"}).json()
    assert similar["similarity_score"] == pytest.approx(6 / 7) and similar["is_similar"] is True
    assert similar["common_words"] == ["cat", "sat", "the"]
    rated = client.post("/quality", json={"content": " ".join(["table"] * 12) + "."}).json()
    assert rated["readability_score"] == pytest.approx(25.455) and rated["quality_rating"] == "Needs Improvement"
    assert rated["suggestions"]


@pytest.mark.parametrize(
    ("path", "payload", "status", "code"),
    [
        ("/analyze", b'{"content": "x"', 400, "malformed_json"),
        ("/analyze", {"content": 5}, 422, "validation_error"),
        ("/analyze", {"content": ""}, 422, "validation_error"),
        ("/analyze", {"content": "x" * 50_001}, 422, "validation_error"),
        ("/analyze", {"content": "x", "threshold": 2}, 422, "validation_error"),
        ("/analyze", {"content": "x", "typo": 1}, 422, "validation_error"),
        ("/similarity", {"text1": "a"}, 422, "validation_error"),
        ("/quality", ["not", "an", "object"], 422, "validation_error"),
        ("/corpora", {"name": "bad name!"}, 422, "validation_error"),
        ("/corpora/nope/documents", {"documents": [{"text": "hello"}]}, 404, "not_found"),
        ("/corpora/nope/duplicates", {"method": "fuzzy"}, 422, "validation_error"),
        ("/corpora/nope/search", {"text": "hello"}, 404, "not_found"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
def test_bad_input_gets_uniform_4xx(client: httpx.Client, path: str, payload: object, status: int, code: str) -> None:
    if isinstance(payload, bytes):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=payload)
    assert_error(response, status, code)


def test_oversized_body_is_refused(client: httpx.Client) -> None:
    docs = [{"text": "word " * 9000} for _ in range(20)]  # about 900 KB > 512 KB
    assert_error(client.post("/corpora/any/documents", json={"documents": docs}), 413, "payload_too_large")


def test_corpus_lifecycle_duplicates_and_reports(client: httpx.Client) -> None:
    created = client.post("/corpora", json={"name": "clough-a", "description": "task a"})
    assert created.status_code == 201 and created.json()["document_count"] == 0
    assert_error(client.post("/corpora", json={"name": "clough-a"}), 409, "conflict")
    files = ["orig_taska.txt", "g0pD_taska.txt", "g0pE_taska.txt", "g0pA_taska.txt"]
    added = client.post(
        "/corpora/clough-a/documents",
        json={"documents": [{"text": clough(f), "name": f, "metadata": {"file": f}} for f in files]},
    )
    assert added.status_code == 201, added.text
    ids = {d["name"]: d["id"] for d in added.json()["documents"]}
    # a batch with one bad document stores nothing
    bad = client.post("/corpora/clough-a/documents", json={"documents": [{"text": "fine text"}, {"text": "?!"}]})
    assert_error(bad, 422, "invalid_input")
    assert_error(
        client.post("/corpora/clough-a/documents", json={"documents": [{"text": "x y z", "name": "orig_taska.txt"}]}),
        409,
        "conflict",
    )
    corpus = client.get("/corpora/clough-a").json()
    assert (corpus["document_count"], corpus["revision"]) == (4, 1)
    listed = client.get("/corpora/clough-a/documents", params={"limit": 2}).json()["documents"]
    assert [d["name"] for d in listed] == files[:2] and listed[0]["text"] is None
    one = client.get(f"/corpora/clough-a/documents/{ids['orig_taska.txt']}").json()
    assert one["text"] == clough("orig_taska.txt") and one["metadata"] == {"file": "orig_taska.txt"}

    report = client.post("/corpora/clough-a/duplicates", json={"method": "containment"}).json()
    pairs = {(p["a"]["name"], p["b"]["name"]) for p in report["pairs"]}
    assert ("orig_taska.txt", "g0pD_taska.txt") in pairs  # cut
    assert ("orig_taska.txt", "g0pE_taska.txt") in pairs  # light
    assert not any("g0pA_taska.txt" in pair for pair in pairs)  # non
    assert report["clusters"][0]["canonical"]["name"] == "orig_taska.txt"
    assert report["pairs"][0]["passages"][0]["words"] >= 3

    csv_response = client.get("/corpora/clough-a/report", params={"method": "containment", "format": "csv"})
    assert csv_response.status_code == 200 and csv_response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert len(rows) == report["pair_count"] and rows[0]["method"] == "containment"
    assert client.get("/corpora/clough-a/report", params={"method": "exact"}).json()["pair_count"] == 0
    assert_error(client.get("/corpora/clough-a/report", params={"format": "xml"}), 422, "validation_error")

    found = client.post("/corpora/clough-a/search", json={"text": clough("g2pC_taska.txt"), "method": "containment"})
    assert found.json()["matches"][0]["name"] == "orig_taska.txt"

    assert client.delete(f"/corpora/clough-a/documents/{ids['g0pD_taska.txt']}").status_code == 204
    assert_error(client.delete(f"/corpora/clough-a/documents/{ids['g0pD_taska.txt']}"), 404, "not_found")
    after = client.post("/corpora/clough-a/duplicates", json={"method": "containment"}).json()
    assert not any("g0pD_taska.txt" in (p["a"]["name"], p["b"]["name"]) for p in after["pairs"])
    assert client.delete("/corpora/clough-a").status_code == 204
    assert_error(client.get("/corpora/clough-a"), 404, "not_found")


@pytest.mark.slow
def test_semantic_search_loads_the_model_once(client: httpx.Client) -> None:
    assert client.post("/corpora", json={"name": "sem"}).status_code == 201
    docs = [{"text": "The cat sat on the mat.", "name": "cat"}, {"text": "Revenue grew ten percent.", "name": "rev"}]
    assert client.post("/corpora/sem/documents", json={"documents": docs}).status_code == 201
    found = client.post(
        "/corpora/sem/search", json={"text": "A cat was sitting on the rug.", "method": "semantic", "threshold": 0.6}
    ).json()
    assert [m["name"] for m in found["matches"]] == ["cat"] and found["threshold"] == 0.6
    assert client.get("/health").json()["embedding_model_loaded"] is True


def test_forwarded_calls_are_scoped_to_the_callers_tenant(client: httpx.Client, base_url: str) -> None:
    from ray import serve

    handle = serve.get_app_handle("redundancy")

    async def forward(method: str, path: str, payload: object | None = None):
        body = json.dumps(payload).encode() if payload is not None else b""
        return await handle.handle_request.remote(
            method, path, body=body, headers={"content-type": "application/json", "x-request-id": "req-1"},
            caller={"tenant": "acme", "subject": "alice", "scopes": ["redundancy"]},
        )

    created = asyncio.run(forward("POST", "/corpora", {"name": "private"}))
    assert created.status_code == 201
    assert [c["name"] for c in json.loads(asyncio.run(forward("GET", "/corpora")).body)["corpora"]] == ["private"]
    assert "private" not in [c["name"] for c in client.get("/corpora").json()["corpora"]]  # public tenant
    missing = asyncio.run(forward("GET", "/corpora/nope"))
    assert missing.status_code == 404 and json.loads(missing.body)["error"]["request_id"] == "req-1"


def test_health_and_stats(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    stats = client.get("/stats").json()
    assert stats["requests"]["POST /analyze"] >= 1
    assert stats["default_thresholds"]["containment"] == 0.07
