"""BUL's requests: check and store them, hand them to the runner, and answer queries about them.

`BulService` is what the Serve app calls: it checks a request completely
before anything is stored (type, inputs, sizes, title), stores a document and
its task together, and reads tasks, documents and versions back per owner
(another tenant's ids are "not found"). Downloads go through the Export
module's renderers, one at a time per replica and under a timeout.

Running the stored tasks (slots, leases, heartbeat, LLM calls) is the job of
`business_modules.bul.runner.JobRunner`, which the service owns; it lives
apart so each half can be read alone. See its docstring for a task's lifecycle.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from business_modules.bul import constants as C
from business_modules.bul import repository as repo
from business_modules.bul.config import BulSettings
from business_modules.bul.doctypes import DOCUMENT_TYPES, CommonInputs, DocumentTypeSpec, get_document_type, \
    infer_document_type
from business_modules.bul.errors import (
    DocumentNotFoundError,
    DocumentNotReadyError,
    InputTooLargeError,
    InvalidRequestError,
    RenderFailedError,
    TaskFinishedError,
    TaskNotFoundError,
)
from business_modules.bul.models import GenerateRequest, RegenerateRequest, TaskKind
from business_modules.bul.repository import Document, Task, Version
from business_modules.bul.runner import INTERRUPTED, STOPPED, JobRunner
from business_modules.llm_client import LLMClient
from business_modules.storage import Database

__all__ = ["EXPORT_FORMATS", "INTERRUPTED", "STOPPED", "BulService"]

EXPORT_FORMATS = ("markdown", "html", "pdf", "docx")


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
        self.runner = JobRunner(db=db, llm=llm, settings=self.settings, runner_id=self.runner_id, clock=clock)
        self._render_slot = asyncio.Semaphore(1)

    async def start(self) -> None:
        """Fail the tasks dead replicas left behind, then keep this replica's leases alive."""
        await self.runner.start()

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat; unfinished tasks of this replica are cancelled and marked failed."""
        await self.runner.close(grace_s=grace_s)

    @staticmethod
    def document_types() -> tuple[DocumentTypeSpec, ...]:
        return DOCUMENT_TYPES

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
        self.runner.check_capacity(owner)
        request = request.model_copy(update={"document_type": spec.name, "inputs": inputs.model_dump()})
        now = self._clock()
        document = Document(id=uuid.uuid4().hex, owner=owner, document_type=spec.name, title=title,
                            request_json=request.model_dump_json(), outline=None, current_version=0,
                            created_at=now, updated_at=now)
        progress = [{"step": "outline", "heading": "Outline", "status": "pending"}] + [
            {"step": "section", "index": i, "heading": s.heading, "status": "pending"}
            for i, s in enumerate(spec.sections)]
        task = self.runner.new_task(document.id, owner, TaskKind.GENERATE, None, "{}", request.priority, progress, now)
        async with self.db.transaction():
            await repo.insert_document(self.db, document)
            await repo.insert_task(self.db, task)
        self.runner.launch(task.id, owner)
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
        self.runner.check_capacity(owner)
        now = self._clock()
        progress = [{"step": "section", "index": index, "heading": spec.sections[index].heading,
                     "status": "pending"}]
        task = self.runner.new_task(document.id, owner, TaskKind.REGENERATE, index, body.model_dump_json(), 1,
                                    progress, now)
        await repo.insert_task(self.db, task)
        self.runner.launch(task.id, owner)
        return task

    async def get(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task as stored (a dead replica's task is reported failed)."""
        task = await repo.get_task(self.db, task_id)
        if task is None or task.owner != owner:
            raise TaskNotFoundError(f"no BUL task {task_id[:64]}")
        if not task.status.finished and task.lease_until is not None and task.lease_until < self._clock():
            await self.runner.fail_stale()
            task = await repo.get_task(self.db, task_id) or task
        return task

    async def cancel(self, task_id: str, *, owner: str | None = None) -> Task:
        task = await self.get(task_id, owner=owner)
        if task.status.finished or not await repo.cancel(self.db, task_id, now=self._clock()):
            task = await self.get(task_id, owner=owner)
            raise TaskFinishedError(f"task {task_id} is already {task.status.value}")
        self.runner.stop(task_id)  # closes its LLM stream, which stops the generation
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

    async def _document(self, document_id: str, owner: str | None) -> Document:
        document = await repo.get_document(self.db, document_id)
        if document is None or document.owner != owner:
            raise DocumentNotFoundError(f"no BUL document {document_id[:64]}")
        return document
