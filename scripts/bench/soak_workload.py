"""The soak's request mix through the gateway: LLM completions (streamed and not), redundancy analysis, export.

Every request checks its answer (status, body shape, a complete stream) and
raises otherwise, so the soak counts wrong answers as errors, not only 5xx.
Inputs are derived from the request's sequence number: the same run sends
the same requests. LLM prompts share a few long business prefixes (cache
hits) and end with a unique question (new blocks), so the KV cache keeps
storing and, with a small budget, keeps evicting.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from scripts.bench.load_gen import Kind

PREFIXES = (
    "You are the assistant of ACME Corp, a mid-sized bakery supplier. Answer briefly and in plain words. "
    "Our customers are small bakeries; our policies cover refunds within 30 days, delivery twice a week. ",
    "You draft internal notes for a logistics team. Keep the tone neutral, list facts before opinions, "
    "and never promise delivery dates that the warehouse has not confirmed in writing. ",
    "You review marketing copy for a software company. Point out repeated phrases, vague claims and "
    "sentences longer than twenty-five words; suggest a shorter wording for each one. ",
)
LLM_MAX_TOKENS = 16
EXPORT_FORMATS = ("markdown", "html", "docx")
EXPORT_MEDIA = {"markdown": "text/markdown", "html": "text/html", "docx": "application/vnd.openxmlformats"}
EXPORT_JOB_WAIT_S = 30.0


def _prompt(seq: int) -> str:
    return f"{PREFIXES[seq % len(PREFIXES)]}Question {seq}: what should we check first about order {seq * 7919 % 10007}?"


def _ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url.path} -> {response.status_code}: "
                           f"{response.text[:300]}")
    return response


def llm_kinds(model: str) -> list[Kind]:
    """Completions and chat completions on ``/api/v1/llm``, chat streamed and not."""

    async def completion(client: httpx.AsyncClient, seq: int) -> None:
        body = {"model": model, "prompt": _prompt(seq), "max_tokens": LLM_MAX_TOKENS, "temperature": 0}
        answer = _ok(await client.post("/api/v1/llm/completions", json=body)).json()
        if answer["object"] != "text_completion" or not isinstance(answer["choices"][0]["text"], str):
            raise RuntimeError(f"not a completion: {answer}")
        if not 0 < answer["usage"]["completion_tokens"] <= LLM_MAX_TOKENS:
            raise RuntimeError(f"usage out of range: {answer['usage']}")

    async def chat(client: httpx.AsyncClient, seq: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": _prompt(seq)}],
                "max_tokens": LLM_MAX_TOKENS, "temperature": 0}
        answer = _ok(await client.post("/api/v1/llm/chat/completions", json=body)).json()
        if answer["choices"][0]["finish_reason"] not in ("stop", "length"):
            raise RuntimeError(f"unexpected finish: {answer['choices'][0]}")

    async def chat_stream(client: httpx.AsyncClient, seq: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": _prompt(seq)}],
                "max_tokens": LLM_MAX_TOKENS, "temperature": 0, "stream": True}
        events: list[str] = []
        async with client.stream("POST", "/api/v1/llm/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                _ok(response)
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
        if not events or events[-1] != "[DONE]":
            raise RuntimeError(f"stream did not end with [DONE]: {events[-3:]}")
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks) or not any(c["choices"] and c["choices"][0]["finish_reason"]
                                                         for c in chunks):
            raise RuntimeError(f"stream without a finish reason, or with an error: {events[-3:]}")

    return [Kind("llm_completion", 2, completion), Kind("llm_chat", 1, chat), Kind("llm_chat_stream", 2, chat_stream)]


def redundancy_kind() -> Kind:
    """``POST /api/v1/redundancy/analyze`` on a text that repeats some words."""

    async def analyze(client: httpx.AsyncClient, seq: int) -> None:
        text = f"Order {seq} shipped late. The late order {seq} was shipped from the north warehouse. " * (1 + seq % 4)
        answer = _ok(await client.post("/api/v1/redundancy/analyze", json={"content": text})).json()
        if not 0 <= answer["redundancy_score"] <= 1 or answer["word_count"] < 10:
            raise RuntimeError(f"implausible analysis: {answer}")

    return Kind("redundancy_analyze", 3, analyze)


def _export_body(seq: int, fmt: str) -> dict:
    return {"content": {"title": f"Weekly report {seq}", "sections": [
        {"heading": "Summary", "content": f"Orders this week: **{seq}**.\n\n- North\n- South\n"},
        {"heading": "Table", "content": f"| Region | Orders |\n|--|--:|\n| North | {seq % 97} |\n"}]},
        "format": fmt, "document_type": "report"}


def export_kinds() -> list[Kind]:
    """A synchronous render (``/api/v1/exports/generate``) and a job (create, poll, download) as one request."""

    async def generate(client: httpx.AsyncClient, seq: int) -> None:
        fmt = EXPORT_FORMATS[seq % len(EXPORT_FORMATS)]
        response = _ok(await client.post("/api/v1/exports/generate", json=_export_body(seq, fmt)))
        if not response.headers["content-type"].startswith(EXPORT_MEDIA[fmt]) or len(response.content) < 100:
            raise RuntimeError(f"{fmt}: {response.headers['content-type']}, {len(response.content)} bytes")

    async def job(client: httpx.AsyncClient, seq: int) -> None:
        accepted = _ok(await client.post("/api/v1/export", json=_export_body(seq, "markdown")), 202).json()
        deadline = time.monotonic() + EXPORT_JOB_WAIT_S
        while (status := _ok(await client.get(accepted["status_url"])).json())["status"] not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"export job still {status['status']} after {EXPORT_JOB_WAIT_S:g} s")
            await asyncio.sleep(0.2)
        if status["status"] != "completed":
            raise RuntimeError(f"export job failed: {status}")
        if f"Weekly report {seq}" not in _ok(await client.get(accepted["download_url"])).text:
            raise RuntimeError("the downloaded export lacks its title")

    return [Kind("export_generate", 1, generate), Kind("export_job", 1, job)]


def gateway_mix(model: str) -> list[Kind]:
    """The whole mix. Per cycle of 10 requests: 5 LLM (2 completions, 1 chat, 2 streamed chats), 3 redundancy
    analyses, 1 export render, 1 export job (its polls are part of that one request)."""
    return [*llm_kinds(model), redundancy_kind(), *export_kinds()]
