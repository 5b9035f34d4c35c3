"""`blatam bench quality`: 20 fixed business prompts through the LLM's OpenAI API, answers you can read.

A small, deterministic benchmark of what the served model says, not how fast
the cache is. The prompts (`quality_prompts`) go one after another, in order,
to ``POST /chat/completions``, greedy (temperature 0), streamed with
``stream_options.include_usage`` so the client times the first token and the
server reports prompt, cached and completion tokens. Each answer is judged by
the pure checks of `quality_metrics`:

- readable: clean UTF-8, English, at least one sentence, no repetition loop
  (distinct 2-/3-grams and the longest back-to-back repeated n-gram);
- the JSON prompts (``json_schema`` response format): the answer parses and
  validates against the schema with `jsonschema` (the text check then reads
  the JSON's string values);
- cache: cached prompt tokens / prompt tokens per prompt and in total (three
  system prompts are each shared by several prompts, in order);
- latency: TTFT (client side, to the first content), total ms, tokens/s.

Where the LLM is: ``--url`` (an OpenAI-compatible base URL, e.g. a running
``blatam up`` at http://127.0.0.1:8000/v1, or any other server), or, without
it, the `llm` app of this repository deployed in this process on a private
local Ray + Serve (`serve_driver`) with ``--model`` (demo, a catalogue name
such as smollm2, or a model folder), called through Serve's HTTP proxy as a
user would, and stopped after.

Every answer's full text is in the JSON (``--json``), next to its measures,
so a reader can check any verdict. The table shows the first characters.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, write_json

if TYPE_CHECKING:  # httpx and the prompts load inside the command, not for `blatam --help`
    import httpx

    from scripts.bench.quality_prompts import QualityPrompt

APP_NAME = "llm-quality"
REQUEST_TIMEOUT_S = 120.0
DEFAULT_MAX_TOKENS = 96
PREVIEW_CHARS = 60
TABLE_WIDTH = 150


@dataclass(slots=True)
class Answer:
    """What one request returned (``error`` set when it failed: an HTTP error, an error event, a timeout)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    total_ms: float = 0.0
    error: str | None = None


# --- the model -------------------------------------------------------------------------------------------


def resolve_model_spec(spec: str | None) -> str | None:
    """``--model`` as `build_llm`'s ``model_path``: None for the demo model, else an installed folder.

    Raises `typer.BadParameter` with the store's one-line message when the
    model is not installed.
    """
    from cache_actors.engine.model_store import ModelPullError, models_root, resolve_model

    try:
        return resolve_model(spec, models_root())
    except ModelPullError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model") from None


def _serve_http_port() -> int:
    """The HTTP port of the Serve instance this process started (`local_serve` picks a free one)."""
    from ray.serve.context import _get_global_client

    # NOTE: private, but the only handle on the port short of the dashboard's REST API, which local_serve leaves out.
    return int(_get_global_client().http_config.port)


@contextmanager
def local_llm(model_path: str | None, *, threads: int | None, max_tokens: int) -> Iterator[str]:
    """The `llm` app on a private Ray + Serve for the duration; yields its OpenAI base URL."""
    from scripts.bench.serve_driver import deploy, local_serve, teardown

    args = {"model_path": model_path, "num_threads": threads, "max_tokens_limit": max(max_tokens, 2048)}
    with local_serve():
        handle = deploy(args, APP_NAME)
        try:
            yield f"http://127.0.0.1:{_serve_http_port()}/{APP_NAME}/v1"
        finally:
            teardown(handle)


# --- one request -----------------------------------------------------------------------------------------


def budget(prompt: QualityPrompt, max_tokens: int) -> int:
    """Output tokens of one prompt: the run's ``max_tokens``, at least the prompt's own (the JSON prompts')."""
    return max(prompt.max_tokens or 0, max_tokens)


def request_body(prompt: QualityPrompt, *, model: str | None, max_tokens: int, stream: bool) -> dict[str, Any]:
    """The chat completion request of one prompt (greedy)."""
    body: dict[str, Any] = {"messages": prompt.messages(), "temperature": 0,
                            "max_tokens": budget(prompt, max_tokens)}
    if model is not None:
        body["model"] = model
    if (response_format := prompt.response_format()) is not None:
        body["response_format"] = response_format
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _error_message(response: httpx.Response) -> str:
    """OpenAI's ``error.message`` of a failed response, else the start of its body."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"


def _apply_usage(answer: Answer, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    answer.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    answer.completion_tokens = int(usage.get("completion_tokens") or 0)
    answer.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def read_sse(lines: Iterator[str], answer: Answer, *, started: float, deadline: float) -> None:
    """Fill ``answer`` from a chat completion stream's lines (server-sent events up to ``data: [DONE]``)."""
    parts: list[str] = []
    for line in lines:
        if time.perf_counter() > deadline:
            raise TimeoutError
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            answer.error = f"error event: {chunk['error'].get('message')}"
            break
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                if answer.ttft_ms is None:
                    answer.ttft_ms = (time.perf_counter() - started) * 1000.0
                parts.append(content)
            answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
        _apply_usage(answer, chunk.get("usage"))
    answer.text = "".join(parts)


def ask(client: httpx.Client, base_url: str, body: dict[str, Any], *, timeout_s: float) -> Answer:
    """POST one chat completion; failures become ``Answer.error`` (the run goes on to the next prompt)."""
    import httpx

    answer = Answer()
    url = f"{base_url}/chat/completions"
    started = time.perf_counter()
    try:
        if body.get("stream"):
            with client.stream("POST", url, json=body) as response:
                if response.is_error:
                    response.read()
                    answer.error = _error_message(response)
                else:
                    read_sse(response.iter_lines(), answer, started=started, deadline=started + timeout_s)
        else:
            response = client.post(url, json=body)
            if response.is_error:
                answer.error = _error_message(response)
            else:
                payload = response.json()
                choice = payload["choices"][0]
                answer.text = choice["message"].get("content") or ""
                answer.finish_reason = choice.get("finish_reason")
                _apply_usage(answer, payload.get("usage"))
    except (TimeoutError, httpx.TimeoutException):
        answer.error = f"no complete answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # a body or event that is not the API's shape
        answer.error = f"unexpected response ({type(exc).__name__}: {exc})"
    answer.total_ms = (time.perf_counter() - started) * 1000.0
    return answer


def served_model(client: httpx.Client, base_url: str) -> str:
    """The first model of ``GET /models``; fails the run (exit 2) when the server does not answer."""
    import httpx

    try:
        response = client.get(f"{base_url}/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        console.print(f"[red]no OpenAI-compatible server at {base_url}: GET /models failed ({exc})[/red]")
        raise typer.Exit(2) from None


# --- judging ---------------------------------------------------------------------------------------------


def judge(prompt: QualityPrompt, answer: Answer, *, max_tokens: int, cache_expected: bool) -> dict[str, Any]:
    """One prompt's row of the JSON: the full answer, its measures and the verdict."""
    from scripts.bench.quality_metrics import check_json, json_strings, text_quality

    checked = None
    readable_text = answer.text
    if prompt.schema is not None:
        checked = check_json(answer.text, prompt.schema)
        if checked.parses:  # judge what a reader reads: the string values, one per line
            readable_text = "\n".join(json_strings(checked.value))
    quality = text_quality(readable_text)
    reasons = [*quality.reasons, *(["json"] if checked is not None and not checked.valid else []),
               *(["error"] if answer.error else [])]
    seconds = answer.total_ms / 1000.0
    decode_s = (answer.total_ms - answer.ttft_ms) / 1000.0 if answer.ttft_ms is not None else 0.0
    return {
        "id": prompt.id, "kind": prompt.kind, "system_id": prompt.system_id, "cache_expected": cache_expected,
        "schema": prompt.schema_name, "user": prompt.user, "max_tokens": budget(prompt, max_tokens),
        "text": answer.text, "finish_reason": answer.finish_reason, "error": answer.error,
        "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
        "cached_tokens": answer.cached_tokens,
        "cached_share": answer.cached_tokens / answer.prompt_tokens if answer.prompt_tokens else 0.0,
        "ttft_ms": answer.ttft_ms, "total_ms": answer.total_ms,
        "tokens_per_s": answer.completion_tokens / seconds if seconds > 0 else 0.0,
        "decode_tokens_per_s": (answer.completion_tokens - 1) / decode_s
        if answer.completion_tokens > 1 and decode_s > 0 else None,
        "quality": quality.to_json(), "json": None if checked is None else checked.to_json(),
        "ok": not reasons, "reasons": reasons,
    }


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's figures: shares of good answers, cache share, latency and throughput."""
    json_rows = [r for r in rows if r["kind"] == "json"]
    shared = [r for r in rows if r["cache_expected"]]
    prompt_tokens = sum(r["prompt_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    shared_prompt = sum(r["prompt_tokens"] for r in shared)
    ttfts = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    total_s = sum(r["total_ms"] for r in rows) / 1000.0
    completion = sum(r["completion_tokens"] for r in rows)
    readable = sum(r["quality"]["ok"] for r in rows)
    json_valid = sum(bool(r["json"] and r["json"]["valid"]) for r in json_rows)
    return {
        "prompts": len(rows), "ok": sum(r["ok"] for r in rows), "ok_share": _share(sum(r["ok"] for r in rows), len(rows)),
        "readable": readable, "readable_share": _share(readable, len(rows)),
        "english": sum(r["quality"]["english"] for r in rows), "loops": sum(r["quality"]["loop"] for r in rows),
        "json_prompts": len(json_rows), "json_valid": json_valid, "json_valid_share": _share(json_valid, len(json_rows)),
        "errors": sum(r["error"] is not None for r in rows),
        "prompt_tokens": prompt_tokens, "cached_tokens": cached, "cached_share": _share(cached, prompt_tokens),
        "cached_share_shared_system": _share(sum(r["cached_tokens"] for r in shared), shared_prompt),
        "completion_tokens": completion,
        "ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
        "total_ms_p50": statistics.median(r["total_ms"] for r in rows) if rows else None,
        "total_s": total_s, "tokens_per_s": completion / total_s if total_s else None,
        "mean_distinct_2": statistics.fmean(r["quality"]["distinct_2"] for r in rows) if rows else None,
    }


def run_prompts(base_url: str, prompts: Sequence[QualityPrompt], *, model: str | None, api_key: str | None,
                max_tokens: int, timeout_s: float, stream: bool,
                on_done: Callable[[], None] = lambda: None) -> tuple[str, list[dict[str, Any]]]:
    """Every prompt in order against ``base_url``; the served model's name and one judged row per prompt."""
    import httpx

    from scripts.bench.quality_prompts import shares_cached_system

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    expected = shares_cached_system(tuple(prompts))
    rows = []
    with httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0)) as client:
        model = model or served_model(client, base_url)
        for prompt in prompts:
            body = request_body(prompt, model=model, max_tokens=max_tokens, stream=stream)
            rows.append(judge(prompt, ask(client, base_url, body, timeout_s=timeout_s), max_tokens=max_tokens,
                              cache_expected=expected[prompt.id]))
            on_done()
    return model, rows


# --- report ----------------------------------------------------------------------------------------------


def _preview(text: str) -> str:
    from rich.markup import escape

    flat = " ".join(text.split())
    if not flat:
        return "[dim](empty)[/dim]"
    return escape(flat[:PREVIEW_CHARS] + ("..." if len(flat) > PREVIEW_CHARS else ""))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def print_report(result: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    rows = result["results"]
    # NOTE: a console narrower than the table (80 columns when stdout is a file or a pipe) would drop columns and
    # squeeze the answer out: the table then keeps its own width, printed uncropped (a terminal wraps the lines).
    narrow = console.width < TABLE_WIDTH
    table = Table(title=f"answer quality: {result['model']} ({len(rows)} prompts, greedy)", box=box.SIMPLE_HEAD,
                  pad_edge=False, width=TABLE_WIDTH if narrow else None)
    verdicts = ["ok" if r["ok"] else "no: " + ",".join(r["reasons"]) for r in rows]
    table.add_column("prompt", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=6))
    table.add_column("kind", no_wrap=True, min_width=4)
    table.add_column("ok?", no_wrap=True, min_width=max(map(len, verdicts), default=3))
    for column in ("distinct-2", "cached/prompt", "ms"):
        table.add_column(column, justify="right", no_wrap=True, min_width=max(len(column), 6))
    table.add_column("answer", no_wrap=True, overflow="ellipsis")
    for r, verdict in zip(rows, verdicts):
        table.add_row(r["id"], r["kind"], verdict if r["ok"] else f"[red]{verdict}[/red]",
                      f"{r['quality']['distinct_2']:.2f}", f"{r['cached_tokens']}/{r['prompt_tokens']}",
                      _ms(r["total_ms"]), _preview(r["text"]))
    console.print(table, crop=False)
    console.print("[dim]ms: whole request; TTFT, tokens/s and every full answer are in the JSON[/dim]")
    s = result["summary"]
    console.print(
        f"[bold]{s['ok']}/{s['prompts']} ok[/bold]: readable English {s['readable']}/{s['prompts']} "
        f"({s['loops']} loops), JSON valid {s['json_valid']}/{s['json_prompts']}, "
        f"cached {s['cached_tokens']}/{s['prompt_tokens']} prompt tokens ({_pct(s['cached_share'])}; "
        f"{_pct(s['cached_share_shared_system'])} on shared system prompts), TTFT p50 {_ms(s['ttft_p50_ms'])} ms, "
        f"total p50 {_ms(s['total_ms_p50'])} ms, {s['tokens_per_s'] or 0:.1f} tokens/s"
        + (f", [red]{s['errors']} errors[/red]" if s["errors"] else ""))


@bench_app.command("quality")
def quality_command(
    url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
                                                 "(default: deploy the llm app on a private local Ray + Serve).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="BLATAM_API_KEY", help="Bearer key sent with --url.")] = None,
    model: Annotated[str | None, typer.Option(help="Without --url: demo (default), a catalogue name (smollm2) or a "
                                                   "model folder. With --url: the model name to send (default: the "
                                                   "server's first in /models).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Output tokens per chat prompt (the JSON prompts get "
                                                        "at least 160).")] = DEFAULT_MAX_TOKENS,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds one request may take.")] = REQUEST_TIMEOUT_S,
    stream: Annotated[bool, typer.Option(help="Stream answers (TTFT measured; usage from stream_options).")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="Without --url: torch threads of the replica.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every answer and figure here.")] = None,
) -> None:
    """Answer quality of 20 fixed business prompts: readable English, JSON validity, cache share, latency."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scripts.bench.quality_metrics import DEFAULT_THRESHOLDS
    from scripts.bench.quality_prompts import PROMPTS, SCHEMAS, SYSTEMS

    err = Console(stderr=True)  # progress and status on stderr: stdout keeps the table and the summary
    model_path = resolve_model_spec(model) if url is None else None

    def run(base_url: str) -> tuple[str, list[dict[str, Any]]]:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as progress:
            task = progress.add_task("prompts", total=len(PROMPTS))
            return run_prompts(base_url, PROMPTS, model=model if url else None, api_key=api_key,
                               max_tokens=max_tokens, timeout_s=timeout, stream=stream,
                               on_done=lambda: progress.advance(task))

    if url is not None:
        base_url = url.rstrip("/")
        served, rows = run(base_url)
    else:
        with ExitStack() as stack:
            with err.status("starting Ray + Serve and deploying the llm app"):
                base_url = stack.enter_context(local_llm(model_path, threads=threads, max_tokens=max_tokens))
            served, rows = run(base_url)
    result = {
        "benchmark": "quality", "model": served, "url": url, "model_path": model_path,
        "config": {"max_tokens": max_tokens, "timeout_s": timeout, "stream": stream, "threads": threads,
                   "temperature": 0, "cpus": os.cpu_count()},
        "thresholds": asdict(DEFAULT_THRESHOLDS), "systems": SYSTEMS, "schemas": SCHEMAS,
        "summary": summarize(rows), "results": rows,
    }
    print_report(result)
    write_json(json_out, result)
