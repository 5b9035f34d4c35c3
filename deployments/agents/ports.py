"""The agents' ports over the other Serve applications: redundancy (corpora), bul (documents), export (files).

Each call goes to the application's ingress through a Serve handle, on the
same forwarding protocol the gateway uses (``handle_request``), with the
run's tenant as the caller, so the service applies exactly the tenant rules
it applies to that tenant's own requests: a run never reads or writes
another tenant's corpora, documents or exports. Each call is its own Serve
request (`call_as_own_request`: a replica makes many at once), bounded by a
timeout after which it is cancelled.

Failures reach the loop as the business module's two kinds: `ToolUnavailable`
(no such application, a replica gone, 429/502/503/504, a timeout: worth a
retry for an idempotent tool) and `ToolFailed` (the service refused the
request: told to the model as it is).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

from business_modules.agents import CorpusHit, ExportedFile, ToolFailed, ToolUnavailable, WrittenDocument
from business_modules.bul import GenerateRequest
from business_modules.export import ExportRequest
from deployments.common.forwarding import ForwardedResponse
from deployments.common.serve_calls import call_as_own_request

AGENTS_SUBJECT = "agents"
"""The caller's subject on the agents' calls (the tenant is the run's)."""

RETRYABLE_STATUSES = {429, 502, 503, 504}
SNIPPET_CHARS = 240
POLL_S = 1.0


class ServiceCalls:
    """Calls other applications' routes through Serve handles (cached per application)."""

    def __init__(self, *, timeout_s: float, handles: dict[str, Any] | None = None) -> None:
        self.timeout_s = timeout_s
        self._handles: dict[str, Any] = dict(handles or {})

    def _handle(self, app: str) -> Any:
        handle = self._handles.get(app)
        if handle is None:
            from ray import serve

            try:
                handle = serve.get_app_handle(app)
            except Exception as exc:  # noqa: BLE001 - Serve raises several kinds for "not deployed"
                raise ToolUnavailable(f"the {app} service is not available: {_short(exc)}") from exc
            self._handles[app] = handle
        return handle

    async def call(self, app: str, method: str, path: str, *, tenant: str | None, body: Any = None,
                   query: list[tuple[str, str]] | None = None, timeout_s: float | None = None) -> ForwardedResponse:
        """One request to ``app``'s route ``path`` as ``tenant``; a non-2xx answer raises."""
        payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"content-type": "application/json", "accept": "application/json"}
        caller = None if tenant is None else {"tenant": tenant, "subject": AGENTS_SUBJECT, "scopes": [app],
                                              "request_id": None}
        response = None
        try:
            response = call_as_own_request(self._handle(app).handle_request.remote, method, path, payload,
                                           query or [], headers, caller)
            result = await asyncio.wait_for(response, timeout=timeout_s or self.timeout_s)
        except ToolUnavailable:
            raise
        except TimeoutError:
            if response is not None:
                response.cancel()
            raise ToolUnavailable(f"the {app} service did not answer within {timeout_s or self.timeout_s:g} s") \
                from None
        except Exception as exc:  # noqa: BLE001 - replica died, application deleted, ...
            self._handles.pop(app, None)
            raise ToolUnavailable(f"the {app} service failed: {_short(exc)}") from exc
        if not isinstance(result, ForwardedResponse):
            raise ToolUnavailable(f"the {app} service does not follow the forwarding protocol")
        if result.status_code >= 400:
            message = f"the {app} service answered {result.status_code}: {_error_message(result)}"
            raise (ToolUnavailable if result.status_code in RETRYABLE_STATUSES else ToolFailed)(message)
        return result


def _error_message(response: ForwardedResponse) -> str:
    try:
        return str(json.loads(response.body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.body[:200].decode("utf-8", "replace")


def _json(response: ForwardedResponse) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        raise ToolFailed("the service answered something that is not JSON") from None


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


class HandleCorpora:
    """`CorpusPort` over the redundancy application."""

    def __init__(self, calls: ServiceCalls, app: str) -> None:
        self.calls = calls
        self.app = app

    async def list_corpora(self, *, tenant: str | None, limit: int) -> list[str]:
        response = await self.calls.call(self.app, "GET", "/corpora", tenant=tenant, query=[("limit", str(limit))])
        return [c["name"] for c in _json(response)["corpora"]]

    async def search(self, *, tenant: str | None, corpus: str, text: str, method: str, threshold: float | None,
                     top_k: int) -> list[CorpusHit]:
        base = f"/corpora/{quote(corpus, safe='')}"
        body = {"text": text, "method": method, "top_k": top_k, "passages": True}
        if threshold is not None:
            body["threshold"] = threshold
        matches = _json(await self.calls.call(self.app, "POST", f"{base}/search", tenant=tenant, body=body))["matches"]
        hits = []
        for match in matches:
            passages = tuple(p["text"] for p in match.get("passages", []))
            snippet = passages[0] if passages else await self._snippet(tenant, base, match["id"])
            hits.append(CorpusHit(id=match["id"], name=match.get("name"), score=float(match["score"]),
                                  snippet=snippet[:SNIPPET_CHARS], passages=passages))
        return hits

    async def _snippet(self, tenant: str | None, base: str, doc_id: str) -> str:
        document = _json(await self.calls.call(self.app, "GET", f"{base}/documents/{quote(doc_id, safe='')}",
                                               tenant=tenant))
        return str(document.get("text") or "")


class HandleDocuments:
    """`DocumentPort` over the bul application: submit, then follow the task until it ends or time is up."""

    def __init__(self, calls: ServiceCalls, app: str, *, poll_s: float = POLL_S) -> None:
        self.calls = calls
        self.app = app
        self.poll_s = poll_s

    async def write(self, *, tenant: str | None, request: GenerateRequest, wait_s: float) -> WrittenDocument:
        accepted = _json(await self.calls.call(self.app, "POST", "/documents/generate", tenant=tenant,
                                               body=json.loads(request.model_dump_json(exclude_none=True))))
        task_id, document_id = accepted["task_id"], accepted["document_id"]
        deadline = time.monotonic() + wait_s
        status: dict[str, Any] = {"status": accepted["status"], "error": None}
        while status["status"] not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_s)
            try:
                status = _json(await self.calls.call(self.app, "GET", f"/tasks/{task_id}/status", tenant=tenant))
            except ToolUnavailable:
                continue  # the document goes on in BUL; keep following it while time is left
        markdown = None
        if status["status"] == "completed":
            response = await self.calls.call(self.app, "GET", f"/documents/{document_id}/download", tenant=tenant,
                                             query=[("format", "markdown")])
            markdown = response.body.decode("utf-8", "replace")
        return WrittenDocument(task_id=task_id, document_id=document_id, status=status["status"],
                               title=accepted.get("title", ""), markdown=markdown, error=status.get("error"),
                               document_url=accepted.get("document_url"))


class HandleExports:
    """`ExportPort` over the export application (an export job; the file is downloaded from the export app)."""

    def __init__(self, calls: ServiceCalls, app: str) -> None:
        self.calls = calls
        self.app = app

    async def export(self, *, tenant: str | None, request: ExportRequest) -> ExportedFile:
        accepted = _json(await self.calls.call(self.app, "POST", "/", tenant=tenant,
                                               body=json.loads(request.model_dump_json(exclude_none=True))))
        return ExportedFile(task_id=accepted["task_id"], status=accepted["status"],
                            download_url=accepted["download_url"], format=accepted["format"])
