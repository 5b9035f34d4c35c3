"""Generations: submit, run in the background, report truthfully, render on demand.

Lifecycle: ``queued`` -> ``running`` -> ``completed`` (cards, HTML, quality
stored in one UPDATE) or ``failed`` (reason kept: the LLM timed out, was
unavailable, refused, or answered off-schema). A generation belongs to the
replica that accepted it (``runner_id``) and carries a lease that replica
renews every ``job_heartbeat_s``; when a replica dies its leases run out and
any replica (heartbeat, start, or a read of that generation) marks them
``failed``, so nothing stays ``running`` forever. They are not re-run.

Exports are rendered on request from the stored cards by Export's renderer
(`business_modules.export.render_document`, in process: same themes, same
sanitising, no second copy of the job machinery), one render at a time per
replica, in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from business_modules.export import RenderedDocument
from business_modules.gamma import repository as repo
from business_modules.gamma.cards import Usage, build_deck
from business_modules.gamma.charts import draw_chart
from business_modules.gamma.config import GammaSettings
from business_modules.gamma.errors import (
    GammaBusyError,
    GammaError,
    GenerationFailedError,
    GenerationNotFoundError,
    GenerationNotReadyError,
    InvalidInputError,
)
from business_modules.gamma.kinds import JobStatus
from business_modules.gamma.models import Deck, GenerationPlan
from business_modules.gamma.quality import assess
from business_modules.gamma.render import EXPORT_FORMATS, export_deck, render_html
from business_modules.gamma.repository import GenerationRow
from business_modules.llm_client import LLMClient, LLMError
from business_modules.storage import Database, StorageError
from business_modules.storage.heartbeat import run_heartbeat

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the gamma replica running this generation stopped before it finished; submit it again"
STOPPED = "interrupted: the gamma service shut down before this generation finished; submit it again"
PURGE_EVERY_BEATS = 30


class GammaService:
    """Generations of one replica over a shared database and an LLM client."""

    def __init__(self, *, db: Database, llm: LLMClient, settings: GammaSettings | None = None,
                 runner_id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings or GammaSettings()
        self.runner_id = runner_id or uuid.uuid4().hex
        self._clock = clock
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_generations)
        self._render_slot = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self._fail_stale()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="gamma-heartbeat")

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop the heartbeat; unfinished generations are cancelled and marked failed."""
        self._stopping.set()
        if self._heartbeat is not None:
            _, pending = await asyncio.wait({self._heartbeat}, timeout=grace_s)
            for task in pending:
                task.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                logger.warning("%d gamma generation task(s) did not stop within %g s", len(pending), grace_s)

    # --- API ---------------------------------------------------------------------
    async def submit(self, plan: GenerationPlan, *, request_json: str, owner: str | None) -> GenerationRow:
        """Store a queued generation (the whole row, or nothing) and start it in the background."""
        if len(self._tasks) >= self.settings.max_pending_jobs:
            raise GammaBusyError(f"this gamma replica already has {len(self._tasks)} unfinished generations; "
                                 "retry in a few seconds")
        now = self._clock()
        row = GenerationRow(
            id=uuid.uuid4().hex, owner=owner, kind=plan.kind, status=JobStatus.QUEUED, format=plan.format.value,
            text_mode=plan.text_mode.value, theme=plan.theme, plan_json=plan.model_dump_json(), created_at=now,
            updated_at=now, runner_id=self.runner_id, lease_until=now + self.settings.job_lease_s,
        )
        await repo.insert(self.db, row, request_json=request_json)
        task = asyncio.create_task(self._run(row.id, plan, owner), name=f"gamma-{row.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return row

    async def get(self, generation_id: str, *, owner: str | None) -> GenerationRow:
        """The generation as stored; another tenant's (or a direct caller's) ids are not found."""
        row = await repo.get(self.db, generation_id)
        if row is None or row.owner != owner:
            raise GenerationNotFoundError(f"no generation {generation_id}")
        if not row.status.finished and row.lease_until is not None and row.lease_until < self._clock():
            await self._fail_stale()
            row = await repo.get(self.db, generation_id) or row
        return row

    async def wait(self, generation_id: str, *, owner: str | None, timeout_s: float,
                   poll_s: float = 0.1) -> GenerationRow:
        """Poll until the generation is finished or ``timeout_s`` passes; return its last state."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = await self.get(generation_id, owner=owner)
            if row.status.finished or time.monotonic() >= deadline:
                return row
            await asyncio.sleep(poll_s)

    async def deck(self, generation_id: str, *, owner: str | None) -> tuple[GenerationRow, Deck]:
        """The cards of a completed generation."""
        row = await self.get(generation_id, owner=owner)
        if row.status is JobStatus.FAILED:
            raise GenerationFailedError(f"generation {generation_id} failed: {row.error or 'unknown error'}")
        if row.status is not JobStatus.COMPLETED or row.deck_json is None:
            raise GenerationNotReadyError(generation_id, row.status.value)
        return row, Deck.model_validate_json(row.deck_json)

    async def export(self, generation_id: str, fmt: str, *, owner: str | None) -> RenderedDocument:
        """The completed generation rendered by Export as ``fmt`` (pdf, pptx, docx, html, markdown)."""
        if fmt not in EXPORT_FORMATS:
            raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {list(EXPORT_FORMATS)}")
        row, deck = await self.deck(generation_id, owner=owner)
        plan = GenerationPlan.model_validate_json(row.plan_json)
        created = datetime.fromtimestamp(row.finished_at or row.created_at, tz=timezone.utc)
        async with self._render_slot:
            return await asyncio.to_thread(export_deck, deck, fmt, now=created, language=plan.language)

    async def chart(self, generation_id: str, index: int, fmt: str, *, owner: str | None) -> bytes:
        """The chart of card ``index`` (0-based) as PNG or SVG."""
        if fmt not in ("png", "svg"):
            raise InvalidInputError(f"charts are png or svg, not {fmt!r}")
        _, deck = await self.deck(generation_id, owner=owner)
        card = next((c for c in deck.cards if c.index == index and c.chart is not None), None)
        if card is None:
            raise GenerationNotFoundError(f"generation {generation_id} has no chart on card {index + 1}")
        from business_modules.export.themes import THEMES

        return await asyncio.to_thread(draw_chart, card.chart, fmt=fmt, colour=THEMES[deck.theme].accent)

    # --- worker --------------------------------------------------------------------
    async def _run(self, generation_id: str, plan: GenerationPlan, owner: str | None) -> None:
        attempt = uuid.uuid4().hex
        usage = Usage()
        async with self._slots:
            now = self._clock()
            if not await repo.claim(self.db, generation_id, runner_id=self.runner_id, attempt_id=attempt, now=now,
                                    lease_until=now + self.settings.job_lease_s):
                logger.info("gamma generation %s was no longer queued when its slot came up", generation_id)
                return
            try:
                deck, usage = await build_deck(plan, llm=self.llm, tenant=owner,
                                               timeout_s=self.settings.llm_call_timeout_s,
                                               outline_max_tokens=self.settings.outline_max_tokens,
                                               card_max_tokens=self.settings.card_max_tokens)
                report = assess(title=deck.title, cards=deck.cards, target_words=plan.target_words,
                                keywords=plan.keywords, language=plan.language)
                html = await asyncio.to_thread(render_html, deck, language=plan.language)
                finished = self._clock()
                won = await repo.complete(
                    self.db, generation_id, attempt_id=attempt, now=finished,
                    expires_at=finished + self.settings.result_retention_s, title=deck.title,
                    deck_json=deck.model_dump_json(), html=html, quality_score=report.score,
                    quality_json=json.dumps({"components": report.components, "metrics": report.metrics,
                                             "suggestions": report.suggestions}),
                    usage_json=json.dumps(_usage(usage)),
                )
                if not won:
                    logger.warning("gamma generation %s was failed while it ran; its result is discarded",
                                   generation_id)
            except asyncio.CancelledError:
                await asyncio.shield(self._record_failure(generation_id, attempt, STOPPED, usage))
                raise
            except (LLMError, GammaError) as exc:
                await self._record_failure(generation_id, attempt, f"{type(exc).__name__}: {exc}", usage)
            except StorageError as exc:
                logger.error("gamma generation %s: database error, left for the lease sweeper: %s",
                             generation_id, exc)
            except Exception as exc:  # noqa: BLE001 - recorded on the generation and logged, never silent
                logger.exception("gamma generation %s failed unexpectedly", generation_id)
                await self._record_failure(generation_id, attempt, f"internal error: {type(exc).__name__}", usage)

    async def _record_failure(self, generation_id: str, attempt: str, error: str, usage: Usage) -> None:
        now = self._clock()
        try:
            await repo.fail(self.db, generation_id, error=error, now=now,
                            expires_at=now + self.settings.result_retention_s, attempt_id=attempt,
                            usage_json=json.dumps(_usage(usage)))
        except StorageError as exc:
            logger.error("gamma generation %s: could not record failure (%s): %s", generation_id, error, exc)

    async def _fail_stale(self) -> int:
        now = self._clock()
        count = await repo.fail_stale(self.db, now=now, error=INTERRUPTED,
                                      expires_at=now + self.settings.result_retention_s)
        if count:
            logger.warning("marked %d gamma generation(s) failed: their replica stopped renewing them", count)
        return count

    async def _heartbeat_loop(self) -> None:
        await run_heartbeat(self._beat, every_s=self.settings.job_heartbeat_s, stopping=self._stopping, name="gamma")

    async def _beat(self, beats: int) -> None:
        await repo.renew_leases(self.db, runner_id=self.runner_id,
                                lease_until=self._clock() + self.settings.job_lease_s)
        await self._fail_stale()
        if beats % PURGE_EVERY_BEATS == 0:
            await repo.purge_expired(self.db, now=self._clock())


def _usage(usage: Usage) -> dict[str, int]:
    return {"calls": usage.calls, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "cached_tokens": usage.cached_tokens}
