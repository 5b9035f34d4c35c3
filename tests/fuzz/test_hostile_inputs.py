"""Hand-written hostile requests through the gateway (real HTTP on the test Serve instance, a real API key).

Bodies that are not JSON, too large, too deep, not UTF-8 or not characters;
numbers JSON cannot or the models do not take; prompts over the context and
``n``/``max_tokens`` at and past their limits; path traversal in every id and
file name the APIs take; template and markup syntax in text the export
service renders to HTML, PDF, DOCX and PPTX. Every refusal is a 4xx with the
uniform error body (``{"error": {"code", "message", "request_id"}}``; the LLM's
routes answer OpenAI's shape, which carries the same three), never a 5xx.
"""

from __future__ import annotations

import http.client
import io
import json
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import docx
import httpx
import pptx
import pypdf
import pytest

from tests.fuzz.conftest import LLM_ARGS, Stack

pytestmark = [pytest.mark.ray, pytest.mark.fuzz]

MAX_MODEL_LEN = LLM_ARGS["max_model_len"]
MAX_TOKENS_LIMIT = LLM_ARGS["max_tokens_limit"]
MAX_N = 8  # deployments/llm/openai/protocol.py MAX_N

SERVICE_POSTS = [
    "/api/v1/auth/login", "/api/v1/gateway/route", "/api/v1/redundancy/analyze", "/api/v1/redundancy/corpora",
    "/api/v1/export/generate", "/api/v1/export/", "/api/v1/bul/documents/generate", "/api/v1/gamma/generations",
    "/api/v1/gamma/content/generate", "/api/v1/agents/agents",
    "/api/v1/agents/agents/sales_agent/capabilities/x/execute",
]
"""JSON routes of the gateway itself and of each service (FastAPI bodies)."""
LLM_POSTS = ["/api/v1/llm/completions", "/api/v1/llm/chat/completions", "/api/v1/llm/tokenize"]
"""The LLM's JSON routes through the gateway (parsed by hand: OpenAI's error shape)."""
JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, *statuses: int, code: str | None = None) -> dict:
    """A 4xx in `statuses` with an error body that has a code, a message and this response's request id."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] and error["message"], error
    assert error["request_id"] == response.headers["x-request-id"], (error, response.headers)
    if code is not None:
        assert error["code"] == code, error
    return error


# -- bodies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SERVICE_POSTS + LLM_POSTS)
def test_malformed_deep_and_non_utf8_json_is_a_clean_400(http: httpx.Client, path: str) -> None:
    llm = path.startswith("/api/v1/llm/")
    assert_error(http.post(path, content=b'{"a": ', headers=JSON), 400,
                 code="invalid_json" if llm else "malformed_json")
    for deep in (b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
        assert_error(http.post(path, content=deep, headers=JSON), 400)
    assert_error(http.post(path, content=b'{"text": "\xff\xfe\xc3("}', headers=JSON), 400)


@pytest.mark.parametrize("path", SERVICE_POSTS + LLM_POSTS)
def test_wrong_content_types_are_refused_with_the_uniform_body(http: httpx.Client, path: str) -> None:
    bodies = [(b"<a/>", "application/xml"), (b"a=1", "application/x-www-form-urlencoded"),
              (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n", "multipart/form-data; boundary=x"),
              (b"", "application/json"), (b"null", "application/json"), (b"[]", "application/json")]
    for content, content_type in bodies:
        assert_error(http.post(path, content=content, headers={"content-type": content_type}), 400, 422)


def test_a_50_mb_body_is_413_whether_it_says_its_length_or_not(http: httpx.Client) -> None:
    big = b'{"content": "' + b"a" * (50 * 1024 * 1024) + b'"}'
    for path in ("/api/v1/export/generate", "/api/v1/redundancy/analyze", "/api/v1/llm/completions",
                 "/api/v1/auth/login"):
        assert_error(http.post(path, content=big, headers=JSON), 413, code="payload_too_large")

    def chunks():
        yield b'{"content": "'
        for _ in range(50):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    assert_error(http.post("/api/v1/export/generate", content=chunks(), headers=JSON), 413, code="payload_too_large")


LONE_SURROGATES = b'"\\ud800 then \\udfff"'
"""JSON escapes of lone UTF-16 surrogates: valid JSON, but no character (the LLM's tokenizer failed: a 500)."""


def test_lone_surrogates_are_refused_everywhere(http: httpx.Client) -> None:
    for path, body in [
        ("/api/v1/llm/completions", b'{"prompt": ' + LONE_SURROGATES + b', "max_tokens": 2}'),
        ("/api/v1/llm/chat/completions", b'{"messages": [{"role": "user", "content": ' + LONE_SURROGATES + b'}]}'),
        ("/api/v1/llm/tokenize", b'{"prompt": ' + LONE_SURROGATES + b'}'),
    ]:
        assert_error(http.post(path, content=body, headers=JSON), 400, code="invalid_json")
    for path, body in [
        ("/api/v1/redundancy/analyze", b'{"content": ' + LONE_SURROGATES + b'}'),
        ("/api/v1/export/generate", b'{"content": ' + LONE_SURROGATES + b'}'),
        ("/api/v1/bul/documents/generate", b'{"query": ' + LONE_SURROGATES + b'}'),
        ("/api/v1/auth/login", b'{"username": ' + LONE_SURROGATES + b', "password": "x"}'),
    ]:
        assert_error(http.post(path, content=body, headers=JSON), 422, code="validation_error")


def test_text_with_a_nul_is_refused_not_a_database_failure(http: httpx.Client) -> None:
    """PostgreSQL cannot store U+0000: these answered 503 storage_error (login: 500 database_error)."""
    nul = "a\u0000b"
    assert http.post("/api/v1/redundancy/corpora", json={"name": "nul-corpus"}).status_code in (201, 409)
    for path, body in [
        ("/api/v1/redundancy/corpora", {"name": "nul-described", "description": nul}),
        ("/api/v1/redundancy/corpora/nul-corpus/documents", {"documents": [{"name": nul, "text": "some text"}]}),
        ("/api/v1/redundancy/corpora/nul-corpus/documents", {"documents": [{"name": "doc", "text": f"text {nul}"}]}),
        ("/api/v1/bul/documents/generate", {"query": f"A business plan for a bakery {nul}"}),
    ]:
        assert_error(http.post(path, json=body), 422, code="unstorable_value")
    assert_error(http.post("/api/v1/auth/login", json={"username": nul, "password": nul}), 401,
                 code="invalid_credentials")
    assert_error(http.get("/api/v1/agents/agents/%00"), 404, code="agent_not_found")
    assert_error(http.delete("/api/v1/agents/agents/a%00b"), 404, code="agent_not_found")
    assert http.get("/api/v1/redundancy/corpora/nul-corpus/documents").json()["documents"] == []  # nothing stored


@pytest.mark.parametrize("offset", [2**63, 2**70])
def test_offsets_past_64_bits_are_refused_not_a_database_failure(http: httpx.Client, offset: int) -> None:
    """``?offset=`` has no upper bound; past 64 bits the driver failed: 503 storage_error."""
    assert http.post("/api/v1/redundancy/corpora", json={"name": "offsets"}).status_code in (201, 409)
    for path in ("/api/v1/redundancy/corpora", "/api/v1/redundancy/corpora/offsets/documents", "/api/v1/agents/runs"):
        assert_error(http.get(path, params={"offset": offset}), 422, code="unstorable_value")
        last = http.get(path, params={"offset": 2**63 - 1})
        assert last.status_code == 200 and list(last.json().values()) == [[]], last.text


# -- numbers ----------------------------------------------------------------------------------------

BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(2**70), str(-(2**70))]
"""Python's JSON parser takes the first five (NaN and infinities); 2**70 fits no int64."""
NUMERIC_FIELDS = [
    ("/api/v1/redundancy/analyze", '{"content": "hello world", "threshold": %s}'),
    ("/api/v1/redundancy/similarity", '{"text1": "a b", "text2": "a c", "threshold": %s}'),
    ("/api/v1/redundancy/corpora/numbers/duplicates", '{"max_pairs": %s}'),
    ("/api/v1/redundancy/corpora/numbers/search", '{"text": "x", "top_k": %s}'),
    ("/api/v1/bul/documents/generate", '{"query": "a business plan for a bakery", "priority": %s}'),
    ("/api/v1/gamma/generations", '{"inputText": "bakery plan", "numCards": %s}'),
]
LLM_NUMERIC_FIELDS = ["max_tokens", "temperature", "top_p", "n", "seed", "logprobs", "max_completion_tokens"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_nan_infinite_and_huge_numbers_are_4xx(http: httpx.Client, value: str) -> None:
    assert http.post("/api/v1/redundancy/corpora", json={"name": "numbers"}).status_code in (201, 409)
    for path, template in NUMERIC_FIELDS:
        assert_error(http.post(path, content=(template % value).encode(), headers=JSON), 422,
                     code="validation_error")
    for field in LLM_NUMERIC_FIELDS:
        body = f'{{"prompt": "hi", "max_tokens": 2, "{field}": {value}}}'.encode()
        error = assert_error(http.post("/api/v1/llm/completions", content=body, headers=JSON), 400)
        assert error["param"] == field, error
    prompt = f'{{"prompt": [1, {value}], "max_tokens": 2}}'.encode()
    assert_error(http.post("/api/v1/llm/completions", content=prompt, headers=JSON), 400)


# -- the LLM's limits ------------------------------------------------------------------------------

SHORT_JSON = {"type": "json_schema", "json_schema": {"name": "flag", "schema": {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}}
"""An answer the grammar ends after a few tokens, so that max_tokens at its limit costs nothing to decode."""


def chat_tokens(http: httpx.Client, content: str) -> int:
    """Prompt tokens of a one-message chat, as the server counts them (template and generation prompt included)."""
    response = http.post("/api/v1/llm/tokenize", json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    return response.json()["count"]


def test_prompt_and_max_tokens_at_the_limits_and_past_them(http: httpx.Client) -> None:
    """The prompt + max_tokens fill the context exactly with max_tokens at its limit: answered; one more: 400."""
    template = chat_tokens(http, "x") - 1  # the demo tokenizer: one token per byte
    content = "x" * (MAX_MODEL_LEN - MAX_TOKENS_LIMIT - template)
    assert chat_tokens(http, content) + MAX_TOKENS_LIMIT == MAX_MODEL_LEN
    chat = {"messages": [{"role": "user", "content": content}], "response_format": SHORT_JSON}
    at = http.post("/api/v1/llm/chat/completions", json={**chat, "max_tokens": MAX_TOKENS_LIMIT})
    assert at.status_code == 200, at.text
    assert json.loads(at.json()["choices"][0]["message"]["content"]) in ({"ok": True}, {"ok": False})
    assert at.json()["usage"]["prompt_tokens"] == MAX_MODEL_LEN - MAX_TOKENS_LIMIT
    longer = {**chat, "messages": [{"role": "user", "content": content + "x"}], "max_tokens": MAX_TOKENS_LIMIT}
    error = assert_error(http.post("/api/v1/llm/chat/completions", json=longer), 400, code="context_length_exceeded")
    assert error["param"] == "max_tokens", error
    for field in ("max_tokens", "max_completion_tokens"):
        for past in (MAX_TOKENS_LIMIT + 1, 0, -1):
            body = {"messages": [{"role": "user", "content": "hi"}], field: past}
            error = assert_error(http.post("/api/v1/llm/chat/completions", json=body), 400, code="invalid_value")
            assert error["param"] == field, error


def test_prompts_over_the_context(http: httpx.Client) -> None:
    over = "x" * (MAX_MODEL_LEN + 10)
    assert_error(http.post("/api/v1/llm/completions", json={"prompt": over, "max_tokens": 1}), 400,
                 code="context_length_exceeded")
    chat = {"messages": [{"role": "user", "content": over}], "max_tokens": 1}
    assert_error(http.post("/api/v1/llm/chat/completions", json=chat), 400, code="context_length_exceeded")
    assert_error(http.post("/api/v1/llm/completions", json={"prompt": [5] * (MAX_MODEL_LEN + 1)}), 400,
                 code="context_length_exceeded")
    # the services that prompt the LLM with the caller's text refuse more than they take before any prompt
    assert_error(http.post("/api/v1/bul/documents/generate", json={"query": "plan " * 20_000}), 413, 422)
    assert_error(http.post("/api/v1/gamma/generations", json={"inputText": "plan " * 100_000}), 413, 422)


def test_n_at_and_past_its_limit(http: httpx.Client) -> None:
    body = {"prompt": "Hello", "max_tokens": 2, "n": MAX_N}
    at = http.post("/api/v1/llm/completions", json=body)
    assert at.status_code == 200, at.text
    assert sorted(choice["index"] for choice in at.json()["choices"]) == list(range(MAX_N))
    for past in (MAX_N + 1, 0, -1):
        error = assert_error(http.post("/api/v1/llm/completions", json={**body, "n": past}), 400,
                             code="invalid_value")
        assert error["param"] == "n", error
    streamed = http.post("/api/v1/llm/chat/completions", json={
        "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2, "n": MAX_N + 1, "stream": True})
    assert_error(streamed, 400, code="invalid_value")


# -- path traversal -----------------------------------------------------------------------------------

TRAVERSALS = [
    "../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5c..%5cwin.ini",
    "%252e%252e%252f", "..", "%2e%2e", "/etc/passwd", "%2Fetc%2Fpasswd", "a%00b",
]
"""Sent as they are (http.client does not normalise): relative and encoded, double-encoded, absolute, NUL."""
ID_ROUTES = [
    ("GET", "/api/v1/export/{x}/status"), ("GET", "/api/v1/export/{x}/download"), ("GET", "/api/v1/export/{x}"),
    ("GET", "/api/v1/bul/tasks/{x}/status"), ("GET", "/api/v1/bul/tasks/{x}/events"),
    ("POST", "/api/v1/bul/tasks/{x}/cancel"), ("GET", "/api/v1/bul/documents/{x}"),
    ("GET", "/api/v1/bul/documents/{x}/download"), ("POST", "/api/v1/bul/documents/{x}/sections/1/regenerate"),
    ("GET", "/api/v1/gamma/generations/{x}"), ("GET", "/api/v1/gamma/generations/{x}/files/pdf"),
    ("GET", "/api/v1/gamma/generations/0123456789abcdef0123456789abcdef/files/{x}"),
    ("GET", "/api/v1/gamma/generations/{x}/cards/1/chart.png"),
    ("GET", "/api/v1/gamma/generations/0123456789abcdef0123456789abcdef/cards/1/chart.{x}"),
    ("GET", "/api/v1/agents/agents/{x}"), ("DELETE", "/api/v1/agents/agents/{x}"),
    ("POST", "/api/v1/agents/agents/{x}/capabilities/{x}/execute"), ("GET", "/api/v1/agents/runs/{x}"),
    ("GET", "/api/v1/agents/runs/{x}/events"), ("POST", "/api/v1/agents/runs/{x}/cancel"),
    ("POST", "/api/v1/agents/runs/{x}/approve"), ("POST", "/api/v1/agents/runs/{x}/reject"),
    ("GET", "/api/v1/redundancy/corpora/{x}"), ("DELETE", "/api/v1/redundancy/corpora/{x}"),
    ("GET", "/api/v1/redundancy/corpora/{x}/documents/{x}"), ("DELETE", "/api/v1/redundancy/corpora/{x}/documents/{x}"),
    ("POST", "/api/v1/redundancy/corpora/{x}/search"), ("GET", "/api/v1/redundancy/corpora/{x}/report"),
    ("GET", "/api/v1/llm/models/{x}"), ("GET", "/api/v1/{x}/health"), ("GET", "/api/v1/{x}"),
]
"""Every route of the gateway's OpenAPI that takes an id or a name in its path (and the generic proxy)."""


def raw_request(stack: Stack, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    url = urlsplit(stack.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        headers = {**stack.headers, **(JSON if body is not None else {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("method", "route"), ID_ROUTES, ids=[f"{m} {r}" for m, r in ID_ROUTES])
def test_path_traversal_in_ids_and_names_finds_nothing(stack: Stack, method: str, route: str) -> None:
    body = b'{"text": "x"}' if route.endswith("/search") else b"{}" if method == "POST" else None
    for attempt in TRAVERSALS:
        path = route.replace("{x}", attempt)
        status, headers, data = raw_request(stack, method, path, body)
        assert status in (400, 404, 405, 422), (path, status, data[:300])
        assert b"root:" not in data and b"[fonts]" not in data.lower(), (path, data[:300])
        error = json.loads(data)["error"]
        assert error["code"] and error["message"] and error["request_id"] == headers["x-request-id"], (path, error)


def test_file_names_cannot_leave_the_download_name(http: httpx.Client) -> None:
    """The export's ``filename`` and the document's title become the download's name: only a plain name is left."""
    for name in ("../../../../tmp/fuzz-escape", "..\\..\\fuzz-escape", "/etc/passwd", "%2e%2e%2ffuzz-escape"):
        response = http.post("/api/v1/export/generate", json={"content": "# Title\n\nText.", "format": "markdown",
                                                              "filename": name})
        assert response.status_code == 200, response.text
        disposition = response.headers["content-disposition"]
        plain = re.search(r'filename="([^"]*)"', disposition).group(1)
        encoded = re.search(r"filename\*=utf-8''(\S+)", disposition).group(1)
        for shown in (plain, encoded):
            assert "/" not in shown and "\\" not in shown and "%2F" not in shown.upper() and "%5C" not in shown.upper()
            assert not shown.startswith("."), disposition


# -- template and markup syntax in rendered text -------------------------------------------------

HOSTILE = ("Plan {{ 7*7 }} and {{ 1337*1001 }} {% for i in range(3) %}LOOP{% endfor %} "
           "<script>alert('x')</script> ${7*7} <%= 7*7 %> {{ config.items() }}")
"""Jinja expressions and statements, a script tag, other engines' syntax: to be shown as written."""
EVALUATED = ("1338337", "LOOPLOOP", "dict_items")


class _Text(HTMLParser):
    """The text of an HTML page (outside <style>), and whether it has a <script> element."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.scripts = 0
        self._skip = False

    def handle_starttag(self, tag: str, attrs) -> None:
        self.scripts += tag == "script"
        self._skip = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._skip = False

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def rendered_text(fmt: str, data: bytes) -> str:
    if fmt == "html":
        parser = _Text()
        parser.feed(data.decode())
        assert parser.scripts == 0 and b"<script" not in data.lower(), "a <script> element in the HTML"
        return " ".join(parser.parts)
    if fmt == "pdf":
        return " ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)
    if fmt == "docx":
        document = docx.Document(io.BytesIO(data))
        return "\n".join([p.text for p in document.paragraphs] + [document.core_properties.title or "",
                                                                  document.core_properties.author or ""])
    if fmt == "pptx":
        deck = pptx.Presentation(io.BytesIO(data))
        return "\n".join(shape.text_frame.text for slide in deck.slides for shape in slide.shapes
                         if shape.has_text_frame)
    return data.decode()


@pytest.mark.parametrize("fmt", ["html", "pdf", "docx", "pptx", "markdown"])
def test_template_syntax_is_rendered_as_text_not_run(http: httpx.Client, fmt: str) -> None:
    body = {"format": fmt, "metadata": {"author": HOSTILE}, "content": {
        "title": HOSTILE, "sections": [{"heading": HOSTILE, "content": f"{HOSTILE}\n\n- {HOSTILE}"}]}}
    response = http.post("/api/v1/export/generate", json=body)
    assert response.status_code == 200, response.text
    text = rendered_text(fmt, response.content)
    flat = re.sub(r"\s+", "", text.replace("\\", ""))  # PDF lines wrap anywhere; Markdown escapes braces
    assert "{{7*7}}" in flat and "{%foriinrange(3)%}LOOP{%endfor%}" in flat, text[:500]
    assert not any(value in flat for value in EVALUATED), text[:500]
    assert not re.search(r"(?<![\d.])49(?![\d.])", text), text[:500]  # 7*7 was not computed anywhere
