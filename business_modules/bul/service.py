"""BUL jobs: generate a document (outline, then each section) or regenerate one section, in the background.

Lifecycle of a task: ``queued`` (stored; waiting for one of its tenant's
slots in this replica) -> ``running`` -> ``completed`` (a new version stored
with it), ``failed`` (the reason kept: an LLM call that failed or timed out,
an outline that was not JSON, a replica that died) or ``cancelled``. As with
Export's jobs, a task belongs to the replica that accepted it and carries a
lease that replica renews; once a lease is past, any replica marks the task
failed, so nothing stays ``running`` forever.

Every call to the LLM carries the tenant (the KV cache salts block keys per
tenant) and a timeout. Prompts are laid out by `business_modules.bul.assembly`
so each call after a document's first reuses the cached head.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from business_modules.bul import assembly
from business_modules.bul import constants as C
from business_modules.bul import repository as repo
from business_modules.bul.config import BulSettings
from business_modules.bul.doctypes import DOCUMENT_TYPES, CommonInputs, DocumentTypeSpec, get_document_type, \
    infer_document_type
from business_modules.bul.errors import (
    BulBusyError,
    DocumentNotFoundError,
    DocumentNotReadyError,
    InputTooLargeError,
    InvalidRequestError,
    OutlineError,
    RenderFailedError,
    TaskFinishedError,
    TaskNotFoundError,
)
from business_modules.bul.models import GenerateRequest, RegenerateRequest, TaskKind, TaskStatus
from business_modules.bul.repository import Document, Task, Version
from business_modules.llm_client import Generation, LLMClient, LLMError, LLMRequestSpec
from business_modules.storage import Database, StorageError

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the BUL replica running this task stopped before it finished; submit it again"
STOPPED = "interrupted: the BUL service shut down before this task finished; submit it again"
EXPORT_FORMATS = ("markdown", "html", "pdf", "docx")


class _Lost(Exception):
    """The task is no longer this attempt's (cancelled, or failed by the sweeper)."""


def _short_errors(exc: ValidationError, prefix: str) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ())) or prefix
        parts.append(f"{prefix}.{where}: {error.get('msg', 'invalid')}" if where != prefix else error.get("msg", ""))
    return "; ".join(parts)


class BulService:
    """BUL of one replica over a shared database and an `LLMClient`."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: BulSettings | None = None,
                 runner_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings or BulSettings()
        self.runner_id = runner_id or uuid.uuid4().hex
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tenant_of: dict[str, str] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._render_slot = asyncio.Semaphore(1)
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self._fail_stale()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="bul-heartbeat")

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat; unfinished tasks of this replica are cancelled and marked failed."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait({self._heartbeat}, timeout=grace_s)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                logger.warning("%d BUL task(s) did not stop within %g s", len(pending), grace_s)

    # --- catalogue -----------------------------------------------------------------------------
    @staticmethod
    def document_types() -> tuple[DocumentTypeSpec, ...]:
        return DOCUMENT_TYPES

    # --- API ---------------------------------------------------------------------------------
    def prepare(self, request: GenerateRequest) -> tuple[DocumentTypeSpec, CommonInputs, str]:
        """Check a request completely before anything is stored: its type, inputs, sizes and title."""
        spec = (get_document_type(request.document_type) if request.document_type
                else infer_document_type(request.query, request.business_area))
        raw = request.inputs or {}
        if len(json.dumps(raw, ensure_ascii=False)) > C.MAX_INPUTS_CHARS:
            raise InputTooLargeError(f"inputs too large: more than {C.MAX_INPUTS_CHARS} characters as JSON")
        try:
            inputs = spec.inputs.model_validate(raw)
        except ValidationError as exc:
            if any(e.get("type") in ("string_too_long", "too_long") for e in exc.errors()):
                raise InputTooLargeError(_short_errors(exc, "inputs")) from None
            raise InvalidRequestError(
                f"inputs do not fit the {spec.name} schema: {_short_errors(exc, 'inputs')}") from None
        title = request.title or self._default_title(spec, inputs, request)
        return spec, inputs, " ".join(title.split())[: C.MAX_TITLE_CHARS]

    @staticmethod
    def _default_title(spec: DocumentTypeSpec, inputs: CommonInputs, request: GenerateRequest) -> str:
        subject = getattr(inputs, spec.title_field, None) or inputs.company_name
        if subject:
            return f"{spec.title}: {subject}"
        query = " ".join(request.query.split())
        return f"{spec.title}: {query[:80]}{'...' if len(query) > 80 else ''}"

    async def submit(self, request: GenerateRequest, *, owner: str | None = None) -> Task:
        """Store the document and its generation task (together), then run the task in the background."""
        spec, inputs, title = self.prepare(request)
        self._check_capacity(owner)
        request = request.model_copy(update={"document_type": spec.name, "inputs": inputs.model_dump()})
        now = self._clock()
        document = Document(id=uuid.uuid4().hex, owner=owner, document_type=spec.name, title=title,
                            request_json=request.model_dump_json(), outline=None, current_version=0,
                            created_at=now, updated_at=now)
        progress = [{"step": "outline", "heading": "Outline", "status": "pending"}] + [
            {"step": "section", "index": i, "heading": s.heading, "status": "pending"}
            for i, s in enumerate(spec.sections)]
        task = self._new_task(document.id, owner, TaskKind.GENERATE, None, "{}", request.priority, progress, now)
        async with self.db.transaction():
            await repo.insert_document(self.db, document)
            await repo.insert_task(self.db, task)
        self._start_task(task.id, owner)
        return task

    async def regenerate(self, document_id: str, index: int, body: RegenerateRequest, *,
                         owner: str | None = None) -> Task:
        """A task that rewrites section ``index`` of the latest version into a new version."""
        document = await self._document(document_id, owner)
        spec = get_document_type(document.document_type)
        if not 0 <= index < len(spec.sections):
            raise DocumentNotFoundError(f"document {document_id} has no section {index} "
                                        f"(sections 0-{len(spec.sections) - 1})")
        if document.current_version < 1 or document.outline is None:
            raise DocumentNotReadyError(f"document {document_id} has no version yet; wait for its generation")
        self._check_capacity(owner)
        now = self._clock()
        progress = [{"step": "section", "index": index, "heading": spec.sections[index].heading,
                     "status": "pending"}]
        task = self._new_task(document.id, owner, TaskKind.REGENERATE, index, body.model_dump_json(), 1, progress,
                              now)
        await repo.insert_task(self.db, task)
        self._start_task(task.id, owner)
        return task

    async def get(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task as stored (a dead replica's task is reported failed)."""
        task = await repo.get_task(self.db, task_id)
        if task is None or task.owner != owner:
            raise TaskNotFoundError(f"no BUL task {task_id[:64]}")
        if not task.status.finished and task.lease_until is not None and task.lease_until < self._clock():
            await self._fail_stale()
            task = await repo.get_task(self.db, task_id) or task
        return task

    async def cancel(self, task_id: str, *, owner: str | None = None) -> Task:
        task = await self.get(task_id, owner=owner)
        if task.status.finished or not await repo.cancel(self.db, task_id, now=self._clock()):
            task = await self.get(task_id, owner=owner)
            raise TaskFinishedError(f"task {task_id} is already {task.status.value}")
        running = self._tasks.get(task_id)
        if running is not None:
            running.cancel()  # closes its LLM stream, which stops the generation
        return await self.get(task_id, owner=owner)

    async def document(self, document_id: str, *, owner: str | None = None
                       ) -> tuple[Document, list[Version], list[Task]]:
        document = await self._document(document_id, owner)
        return document, await repo.versions_of(self.db, document_id), await repo.tasks_of(self.db, document_id)

    async def version(self, document_id: str, *, owner: str | None = None, version: int | None = None
                      ) -> tuple[Document, Version]:
        document, versions, _ = await self.document(document_id, owner=owner)
        if not versions:
            raise DocumentNotReadyError(f"document {document_id} has no version yet")
        if version is None:
            return document, versions[-1]
        for item in versions:
            if item.version == version:
                return document, item
        raise DocumentNotFoundError(f"document {document_id} has no version {version}")

    async def export(self, document_id: str, fmt: str, *, owner: str | None = None,
                     version: int | None = None) -> Any:
        """The document rendered by the Export module's renderers (``RenderedDocument``)."""
        from business_modules.export import ExportError, ExportRequest, render_document

        if fmt not in EXPORT_FORMATS:
            raise InvalidRequestError(f"unknown format {fmt[:32]!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        document, chosen = await self.version(document_id, owner=owner, version=version)
        spec = get_document_type(document.document_type)
        language = GenerateRequest.model_validate_json(document.request_json).language
        request = ExportRequest(
            content=chosen.markdown, format=fmt, document_type=spec.export_type, title=document.title,
            filename=f"{document.title} v{chosen.version}",
            metadata={"title": document.title, "subject": spec.title, "language": language,
                      "created": datetime.fromtimestamp(chosen.created_at, tz=timezone.utc)},
        )
        now = datetime.now(timezone.utc)
        async with self._render_slot:
            try:
                async with asyncio.timeout(self.settings.render_timeout_s):
                    return await asyncio.to_thread(render_document, request, now=now)
            except TimeoutError:
                raise RenderFailedError(f"rendering took longer than {self.settings.render_timeout_s:g} s") from None
            except ExportError as exc:
                raise RenderFailedError(f"{fmt} rendering failed: {exc}") from exc

    async def events(self, task_id: str, *, owner: str | None = None, poll_s: float = 0.2,
                     timeout_s: float = 600.0) -> AsyncIterator[Task]:
        """The task each time its status or progress changes, ending with its finished state."""
        last: tuple[Any, ...] | None = None
        deadline = time.monotonic() + timeout_s
        while True:
            task = await self.get(task_id, owner=owner)
            key = (task.status, json.dumps(task.progress))
            if key != last:
                last = key
                yield task
            if task.status.finished or time.monotonic() > deadline:
                return
            await asyncio.sleep(poll_s)

    # --- worker --------------------------------------------------------------------------------
    def _new_task(self, document_id: str, owner: str | None, kind: TaskKind, index: int | None, request_json: str,
                  priority: int, progress: list[dict[str, Any]], now: float) -> Task:
        return Task(id=uuid.uuid4().hex, document_id=document_id, owner=owner, kind=kind, section_index=index,
                    request_json=request_json, status=TaskStatus.QUEUED, priority=priority, progress=progress,
                    created_at=now, updated_at=now, runner_id=self.runner_id,
                    lease_until=now + self.settings.job_lease_s)

    def _check_capacity(self, owner: str | None) -> None:
        tenant = owner or ""
        pending = sum(1 for t in self._tenant_of.values() if t == tenant)
        if pending >= self.settings.max_pending_per_tenant:
            raise BulBusyError(f"this tenant already has {pending} unfinished BUL tasks here; retry in a few seconds")

    def _start_task(self, task_id: str, owner: str | None) -> None:
        tenant = owner or ""
        self._tenant_of[task_id] = tenant
        task = asyncio.create_task(self._run(task_id, tenant), name=f"bul-{task_id}")
        self._tasks[task_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(task_id, None)
            self._tenant_of.pop(task_id, None)

        task.add_done_callback(done)

    def _slot(self, tenant: str) -> asyncio.Semaphore:
        slot = self._slots.get(tenant)
        if slot is None:
            slot = self._slots[tenant] = asyncio.Semaphore(self.settings.max_running_per_tenant)
        return slot

    async def _run(self, task_id: str, tenant: str) -> None:
        async with self._slot(tenant):
            attempt = uuid.uuid4().hex
            now = self._clock()
            if not await repo.claim(self.db, task_id, runner_id=self.runner_id, attempt_id=attempt, now=now,
                                    lease_until=now + self.settings.job_lease_s):
                logger.info("BUL task %s was no longer queued when its slot came up", task_id)
                return
            try:
                task = await repo.get_task(self.db, task_id)
                assert task is not None
                if task.kind is TaskKind.GENERATE:
                    await self._generate(task, attempt)
                else:
                    await self._regenerate(task, attempt)
            except asyncio.CancelledError:
                await asyncio.shield(self._record_failure(task_id, attempt, STOPPED))
                raise
            except _Lost:
                logger.info("BUL task %s was cancelled or taken over while it ran", task_id)
            except LLMError as exc:
                await self._record_failure(task_id, attempt, f"LLM call failed: {exc}")
            except OutlineError as exc:
                await self._record_failure(task_id, attempt, str(exc))
            except StorageError as exc:
                logger.error("BUL task %s: database error, left for the lease sweeper: %s", task_id, exc)
            except Exception as exc:  # noqa: BLE001 - recorded on the task and logged, never silent
                logger.exception("BUL task %s failed unexpectedly", task_id)
                await self._record_failure(task_id, attempt, f"internal error: {type(exc).__name__}")

    async def _load(self, task: Task) -> tuple[Document, DocumentTypeSpec, GenerateRequest, CommonInputs]:
        document = await repo.get_document(self.db, task.document_id)
        assert document is not None
        spec = get_document_type(document.document_type)
        request = GenerateRequest.model_validate_json(document.request_json)
        return document, spec, request, spec.inputs.model_validate(request.inputs or {})

    async def _call(self, spec: LLMRequestSpec, entry: dict[str, Any], task: Task, attempt: str,
                    progress: list[dict[str, Any]]) -> Generation:
        entry["status"] = "running"
        await self._save(task, attempt, progress)
        result = await self.llm.generate(spec)
        entry.update(status="completed", prompt_tokens=result.usage.prompt_tokens,
                     cached_tokens=result.usage.cached_tokens, completion_tokens=result.usage.completion_tokens,
                     ttft_ms=result.ttft_ms, latency_ms=result.latency_ms, finish_reason=result.finish_reason)
        await self._save(task, attempt, progress)
        return result

    async def _save(self, task: Task, attempt: str, progress: list[dict[str, Any]]) -> None:
        if not await repo.save_progress(self.db, task.id, attempt_id=attempt, progress=progress, now=self._clock()):
            raise _Lost(task.id)

    def _spec(self, messages: list[Any], task: Task, *, max_tokens: int, **extra: Any) -> LLMRequestSpec:
        return LLMRequestSpec(messages=messages, max_tokens=max_tokens, tenant_id=task.owner or None,
                              timeout_s=self.settings.llm_timeout_s, metadata={"request_id": task.id}, **extra)

    async def _generate(self, task: Task, attempt: str) -> None:
        document, spec, request, inputs = await self._load(task)
        progress = [dict(entry) for entry in task.progress]
        note = self.settings.outline_note_chars
        outline_tokens = sum(len(s.key) + 8 + note for s in spec.sections) + 16
        result = await self._call(
            self._spec(assembly.outline_messages(spec, request, inputs), task, max_tokens=outline_tokens,
                       json_schema=assembly.outline_schema(spec, note), schema_name="outline"),
            progress[0], task, attempt, progress)
        try:
            outline = assembly.parse_outline(spec, result.text)
        except ValueError as exc:
            raise OutlineError(f"the LLM's outline is not the JSON its schema asks for "
                               f"(finish reason {result.finish_reason}): {exc}") from None
        await repo.save_outline(self.db, document.id, outline, now=self._clock())
        tokens = self.settings.section_tokens(request.length)
        texts: list[assembly.SectionText] = []
        for i, section in enumerate(spec.sections):
            generated = await self._call(
                self._spec(assembly.section_messages(spec, request, inputs, outline, i), task, max_tokens=tokens),
                progress[i + 1], task, attempt, progress)
            texts.append(assembly.SectionText(heading=section.heading, body=generated.text))
        await self._complete(task, attempt, spec, document, inputs, texts, progress)

    async def _regenerate(self, task: Task, attempt: str) -> None:
        document, spec, request, inputs = await self._load(task)
        body = RegenerateRequest.model_validate_json(task.request_json)
        latest = (await repo.versions_of(self.db, document.id))[-1]
        index = task.section_index
        assert index is not None and document.outline is not None
        progress = [dict(entry) for entry in task.progress]
        seed = body.seed if body.seed is not None else latest.version + 1
        generated = await self._call(
            self._spec(assembly.section_messages(spec, request, inputs, document.outline, index, body.guidance),
                       task, max_tokens=self.settings.section_tokens(request.length), temperature=0.8, seed=seed),
            progress[0], task, attempt, progress)
        texts = [assembly.SectionText(heading=s["heading"], body=s["body"]) for s in latest.sections]
        texts[index] = assembly.SectionText(heading=spec.sections[index].heading, body=generated.text)
        await self._complete(task, attempt, spec, document, inputs, texts, progress)

    async def _complete(self, task: Task, attempt: str, spec: DocumentTypeSpec, document: Document,
                        inputs: CommonInputs, texts: list[assembly.SectionText],
                        progress: list[dict[str, Any]]) -> None:
        markdown = assembly.render_markdown(spec, title=document.title, inputs=inputs, sections=texts)
        version = await repo.complete_with_version(
            self.db, task, attempt_id=attempt, sections=[{"heading": t.heading, "body": t.body} for t in texts],
            markdown=markdown, progress=progress, now=self._clock())
        if version is None:
            raise _Lost(task.id)

    async def _record_failure(self, task_id: str, attempt: str, error: str) -> None:
        try:
            await repo.fail(self.db, task_id, error=error, now=self._clock(), attempt_id=attempt)
        except StorageError as exc:
            logger.error("BUL task %s: could not record failure (%s): %s", task_id, error, exc)

    async def _document(self, document_id: str, owner: str | None) -> Document:
        document = await repo.get_document(self.db, document_id)
        if document is None or document.owner != owner:
            raise DocumentNotFoundError(f"no BUL document {document_id[:64]}")
        return document

    async def _fail_stale(self) -> int:
        count = await repo.fail_stale(self.db, now=self._clock(), error=INTERRUPTED)
        if count:
            logger.warning("marked %d BUL task(s) failed: their replica stopped renewing them", count)
        return count

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self.settings.job_heartbeat_s):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            try:
                await repo.renew_leases(self.db, runner_id=self.runner_id,
                                        lease_until=self._clock() + self.settings.job_lease_s)
                await self._fail_stale()
            except Exception:  # noqa: BLE001 - the heartbeat must outlive a database hiccup; logged
                logger.exception("BUL heartbeat failed; retrying in %g s", self.settings.job_heartbeat_s)
