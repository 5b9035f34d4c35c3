"""BUL's background execution: the tasks one replica runs, their leases, heartbeat and per-tenant slots.

It exists apart from `business_modules.bul.service` so that checking and
storing a request (the service) and running it (here) can each be read and
changed alone; the service owns one `JobRunner` and hands it stored tasks.

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
import logging
import uuid
from collections.abc import Callable
from typing import Any

from business_modules.bul import assembly
from business_modules.bul import repository as repo
from business_modules.bul.config import BulSettings
from business_modules.bul.doctypes import CommonInputs, DocumentTypeSpec, get_document_type
from business_modules.bul.errors import BulBusyError, OutlineError
from business_modules.bul.models import GenerateRequest, RegenerateRequest, TaskKind, TaskStatus
from business_modules.bul.repository import Document, Task
from business_modules.llm_client import Generation, LLMClient, LLMError, LLMRequestSpec
from business_modules.storage import Database, StorageError
from business_modules.storage.heartbeat import run_heartbeat
from business_modules.storage.tenant_tasks import TenantTasks

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the BUL replica running this task stopped before it finished; submit it again"
STOPPED = "interrupted: the BUL service shut down before this task finished; submit it again"


class _Lost(Exception):
    """The task is no longer this attempt's (cancelled, or failed by the sweeper)."""


class JobRunner:
    """Runs this replica's BUL tasks in the background and keeps their leases alive."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: BulSettings, runner_id: str,
                 clock: Callable[[], float]) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings
        self.runner_id = runner_id
        self._clock = clock
        self._jobs = TenantTasks(max_running_per_tenant=settings.max_running_per_tenant, name="bul")
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.fail_stale()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="bul-heartbeat")

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat; unfinished tasks of this replica are cancelled and marked failed."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait({self._heartbeat}, timeout=grace_s)
        await self._jobs.stop_all(grace_s=grace_s)

    def new_task(self, document_id: str, owner: str | None, kind: TaskKind, index: int | None, request_json: str,
                 priority: int, progress: list[dict[str, Any]], now: float) -> Task:
        """A queued task owned by this runner, its lease starting at ``now``."""
        return Task(id=uuid.uuid4().hex, document_id=document_id, owner=owner, kind=kind, section_index=index,
                    request_json=request_json, status=TaskStatus.QUEUED, priority=priority, progress=progress,
                    created_at=now, updated_at=now, runner_id=self.runner_id,
                    lease_until=now + self.settings.job_lease_s)

    def check_capacity(self, owner: str | None) -> None:
        """Raise `BulBusyError` when the tenant already has its most unfinished tasks here."""
        pending = self._jobs.unfinished(owner)
        if pending >= self.settings.max_pending_per_tenant:
            raise BulBusyError(f"this tenant already has {pending} unfinished BUL tasks here; retry in a few seconds")

    def launch(self, task_id: str, owner: str | None) -> None:
        """Run a stored task in the background once one of its tenant's slots is free."""
        self._jobs.launch(task_id, owner, lambda: self._run(task_id))

    def stop(self, task_id: str) -> None:
        """Cancel the task's run in this replica, if it has one (its LLM stream closes, ending the generation)."""
        self._jobs.stop(task_id)

    async def fail_stale(self) -> int:
        """Mark failed every unfinished task whose lease is past (its replica stopped renewing it)."""
        count = await repo.fail_stale(self.db, now=self._clock(), error=INTERRUPTED)
        if count:
            logger.warning("marked %d BUL task(s) failed: their replica stopped renewing them", count)
        return count

    async def _run(self, task_id: str) -> None:
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
            texts.append(assembly.SectionText(heading=section.heading,
                                              body=assembly.section_body(generated.text, generated.finish_reason)))
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
        texts[index] = assembly.SectionText(heading=spec.sections[index].heading,
                                            body=assembly.section_body(generated.text, generated.finish_reason))
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

    async def _heartbeat_loop(self) -> None:
        await run_heartbeat(self._beat, every_s=self.settings.job_heartbeat_s, stopping=self._stopping, name="BUL")

    async def _beat(self, _beats: int) -> None:
        await repo.renew_leases(self.db, runner_id=self.runner_id, lease_until=self._clock() + self.settings.job_lease_s)
        await self.fail_stale()
