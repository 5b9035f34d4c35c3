"""The gamma application over real HTTP on a local Serve instance, its cards written by a real `llm`
application on the demo model (random words: the tests check structure, never prose), stored in
PostgreSQL (a private schema) or SQLite, and called through the gateway with API keys."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pptx
import pypdf
import pytest

from business_modules.auth import repository as _auth_repository  # noqa: F401 - registers auth migrations
from business_modules.export import THEMES
from business_modules.gamma import repository as _gamma_repository  # noqa: F401 - registers gamma migrations
from business_modules.storage import open_database
from deployments.app_builder import build_gateway
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.deployments.conftest import run_app
from tests.storage_fixtures import drop_redis_keys, drop_schema, seed_api_keys, unique_schema

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LLM_APP = "gamma-llm"
LLM_ARGS = {"max_model_len": 4096, "max_batch_size": 4, "max_tokens_limit": 2048,
            "cache": {"enable_distributed": True, "block_size": 16, "max_memory_mb": 64}}
SECRET = "gamma-gateway-test-secret-0123456789-abcdefgh"
WAIT_S = 240.0
HOSTILE = "Plan {{ 7 * 7 }} <script>alert(1)</script>"
INPUT = f"Quarterly review. {HOSTILE}\n\nNorth: 120\nSouth: 95\nEast: 143\n\nWe open two stores."


@dataclass(frozen=True)
class GammaEnv:
    """One `env`: where to call, the gateway's API keys, and the database gamma stores its generations in."""

    base_url: str
    keys: dict[str, str]
    database_url: str
    database_schema: str | None  # PostgreSQL schema; None on SQLite

    def generation_rows(self) -> int:
        """Rows of ``gamma_generations`` in this env's database (PostgreSQL schema or SQLite file)."""
        return asyncio.run(self._count())

    async def _count(self) -> int:
        schema = {"schema": self.database_schema} if self.database_schema else {}
        # migrate (gamma only, under the migration lock) in case no request has opened the database yet
        db = await open_database(self.database_url, components=["gamma"], **schema)
        try:
            return int(await db.fetch_value("SELECT COUNT(*) FROM gamma_generations"))
        finally:
            await db.close()


@pytest.fixture(scope="module")
def llm_app(serve_instance) -> Iterator[str]:
    from ray import serve

    from deployments.llm import build_llm

    run_app(build_llm(LLM_ARGS), name=LLM_APP, route_prefix=f"/{LLM_APP}")
    yield LLM_APP
    serve.delete(LLM_APP)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def env(request, serve_instance, llm_app: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GammaEnv]:
    """gamma (on one backend) behind the gateway; the gateway's auth tables always live in PostgreSQL."""
    from ray import serve

    from deployments.gamma import build_gamma

    schema = unique_schema("gamma")
    prefix = f"test-gamma-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path_factory.mktemp("gamma-data")
    database = ({"database_url": TEST_DATABASE_URL, "database_schema": schema} if request.param == "postgresql"
                else {"database_url": f"sqlite:///{data_dir / 'gamma.db'}"})
    run_app(build_gamma({**database, "llm_app": llm_app, "data_dir": str(data_dir), "max_body_bytes": 256 * 1024,
                         "settings": {"content_wait_s": WAIT_S}}),
            name="gamma", route_prefix="/gamma")
    settings = {"blatam_env": "test", "secret_key": SECRET, "database_url": TEST_DATABASE_URL,
                "database_schema": schema, "redis_url": TEST_REDIS_URL, "rate_limit_key_prefix": prefix,
                "rate_limit_default": "1000/minute", "gateway_request_timeout_s": WAIT_S}
    run_app(build_gateway({"settings": settings}), name="gateway", route_prefix="/")
    keys = asyncio.run(seed_api_keys(TEST_DATABASE_URL, schema, secret=SECRET,
                                     users={"ann": ("acme", "gamma"), "bo": ("globex", "gamma")}))
    try:
        yield GammaEnv(base_url=serve_instance.base_url, keys=keys, database_url=database["database_url"],
                       database_schema=database.get("database_schema"))
    finally:
        serve.delete("gateway")
        serve.delete("gamma")
        asyncio.run(drop_schema(TEST_DATABASE_URL, schema))
        drop_redis_keys(TEST_REDIS_URL, prefix)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"] and body["error"]["request_id"]
    return body["error"]


def poll(http: httpx.Client, url: str, headers: dict) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        response = http.get(url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] in {"queued", "running", "completed", "failed"}
        if body["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def test_generation_through_the_gateway_with_cards_chart_and_exports(env: GammaEnv) -> None:
    ann, bo = {"X-API-Key": env.keys["ann"]}, {"X-API-Key": env.keys["bo"]}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S + 30) as http:
        created = http.post("/api/v1/gamma/generations", headers=ann, json={
            "inputText": INPUT, "format": "presentation", "numCards": 2, "themeId": "modern", "exportAs": "pptx",
            "textOptions": {"amount": "brief", "tone": "calm", "audience": "board", "language": "en"}})
        assert created.status_code == 202, created.text
        generation_id = created.json()["generationId"]
        assert env.generation_rows() >= 1  # the counter reads the database this gamma writes
        assert created.json()["statusUrl"] == f"/api/v1/gamma/generations/{generation_id}"

        result = poll(http, f"/api/v1/gamma/generations/{generation_id}", ann)
        assert result["status"] == "completed", result
        cards = result["cards"]
        assert len(cards) == 2 and all(c["heading"] for c in cards)
        assert cards[1]["layout"] == "chart"  # the input has numbers: the chart is theirs, not the model's
        assert cards[1]["chart"]["values"] == [120, 95, 143] and cards[1]["chart"]["labels"] == ["North", "South",
                                                                                                  "East"]
        assert "<script" not in result["html"] and result["html"].count("data:image/png;base64,") == 1
        assert THEMES["modern"].accent in result["html"]
        assert 0 <= result["qualityScore"] <= 1 and isinstance(result["suggestions"], list)
        assert result["usage"]["calls"] == 3 and result["usage"]["cached_tokens"] > 0  # cards reuse the prefix
        assert result["exportUrl"] == f"/api/v1/gamma/generations/{generation_id}/files/pptx"

        deck = http.get(result["exportUrl"], headers=ann)
        assert deck.status_code == 200 and deck.headers["content-type"].endswith("presentationml.presentation")
        slides = pptx.Presentation(io.BytesIO(deck.content)).slides
        titles = {s.shapes.title.text for s in slides if s.shapes.title is not None}
        assert {c["heading"] for c in cards} <= titles
        pdf = http.get(result["exportUrls"]["pdf"], headers=ann)
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        assert "North: 120" in "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
        chart = http.get(cards[1]["chart"]["png_url"], headers=ann)
        assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")

        assert_error(http.get(f"/api/v1/gamma/generations/{generation_id}", headers=bo), 404, "generation_not_found")
        assert_error(http.get(result["exportUrls"]["pdf"], headers=bo), 404, "generation_not_found")
        assert http.get(f"/api/v1/gamma/generations/{generation_id}").status_code == 401


def test_original_content_generate_through_the_gateway(env: GammaEnv) -> None:
    ann = {"X-API-Key": env.keys["ann"]}
    with httpx.Client(base_url=env.base_url, timeout=WAIT_S + 30) as http:
        response = http.post("/api/v1/gamma/content/generate", headers=ann, json={
            "content_type": "social_post", "topic": f"Launch {HOSTILE}", "description": "We open a bakery.",
            "target_audience": "neighbours", "length": "short", "keywords": ["bakery", "bread"],
            "output_format": "html"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) >= {"content_id", "title", "content", "quality_score", "suggestions", "export_urls"}
        assert body["title"] == f"Launch {HOSTILE}"  # the user's topic, verbatim, as data
        assert "<script" not in body["content"] and "Launch Plan {{ 7 * 7 }} &lt;script&gt;alert(1)&lt;/script&gt;" in body["content"]
        assert 0 <= body["quality_score"] <= 1 and set(body["export_urls"]) >= {"pdf", "pptx"}
        status = http.get(f"/api/v1/gamma/generations/{body['content_id']}", headers=ann).json()
        assert status["status"] == "completed" and status["format"] == "social"


def test_bad_input_is_a_clear_4xx(env: GammaEnv) -> None:
    """Each bad request gets its 4xx and stores nothing."""
    ann = {"X-API-Key": env.keys["ann"]}
    content = {"content_type": "email", "topic": "t", "description": "d", "target_audience": "a"}
    stored = env.generation_rows()
    with httpx.Client(base_url=env.base_url, timeout=60) as http:
        url = "/api/v1/gamma/generations"
        assert_error(http.post(url, headers=ann, json={"inputText": "x", "themeId": "neon"}), 422, "validation_error")
        assert_error(http.post(url, headers=ann, json={"inputText": 42}), 422, "validation_error")
        assert_error(http.post(url, headers=ann, json={"inputText": "x", "numCards": "many"}), 422,
                     "validation_error")
        assert_error(http.post(url, headers=ann, json={"inputText": "x", "format": "poster"}), 422,
                     "validation_error")
        assert_error(http.post(url, headers=ann, json={"inputText": "x" * 20_001}), 413, "input_too_large")
        assert_error(http.post(url, headers={**ann, "content-type": "application/json"}, content=b"{"), 400,
                     "malformed_json")
        eleven = assert_error(http.post("/api/v1/gamma/content/generate", headers=ann,
                                        json={**content, "keywords": [f"k{i}" for i in range(11)]}),
                              422, "validation_error")
        assert "keywords" in eleven["message"]
        assert_error(http.post("/api/v1/gamma/content/generate", headers=ann, json={**content, "theme": "neon"}),
                     422, "validation_error")
        assert_error(http.get("/api/v1/gamma/generations/not-an-id", headers=ann), 404, "generation_not_found")
        assert {t["name"] for t in http.get("/api/v1/gamma/themes", headers=ann).json()} == set(THEMES)
    assert env.generation_rows() == stored


def test_preserve_mode_called_directly(env: GammaEnv, serve_instance) -> None:
    """Direct calls (no gateway caller) see only unowned generations; preserve mode needs no LLM."""
    with httpx.Client(base_url=f"{serve_instance.base_url}/gamma", timeout=60) as http:
        text = f"# Intro\n{HOSTILE}\n---\nSecond\n\nMore."
        created = http.post("/generations", json={"inputText": text, "textMode": "preserve",
                                                  "cardSplit": "inputTextBreaks", "exportAs": "pdf"})
        assert created.status_code == 202, created.text
        result = poll(http, f"/generations/{created.json()['generationId']}", {})
        assert result["status"] == "completed" and result["usage"]["calls"] == 0
        assert [c["paragraphs"] for c in result["cards"]] == [[HOSTILE], ["More."]]
        assert result["exportUrl"].endswith("/files/pdf")
        assert http.get("/health").json()["database"] == "ok"
