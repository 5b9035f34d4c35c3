"""What the Business Agents tests share: the agents' ports over the real Export and Redundancy services in
process, a fault injector for ports, a model client that can be held mid-call, and a movable clock.

The ports call the same business services the Serve adapters reach through
handles, as the run's tenant, so a test of the loop sees real export jobs
and real corpus matches; only the model is scripted (its choices are what a
test must control).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from business_modules.agents import CorpusHit, ExportedFile, ToolFailed, ToolUnavailable
from business_modules.export import ExportRequest, ExportService
from business_modules.llm_client import Generation, LLMRequestSpec, ScriptedLLM
from business_modules.redundancy import Method, NotFoundError
from business_modules.redundancy.service import RedundancyService

PUBLIC = "public"


class Clock:
    """Injected wall clock the tests can move forward."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def __call__(self) -> float:
        return time.time() + self.offset_s


@dataclass
class LocalCorpora:
    """`CorpusPort` over a `RedundancyService` in process (unowned runs use its public tenant)."""

    service: RedundancyService

    async def list_corpora(self, *, tenant: str | None, limit: int) -> list[str]:
        return [c.name for c in await self.service.list_corpora(tenant=tenant or PUBLIC, limit=limit, offset=0)]

    async def search(self, *, tenant: str | None, corpus: str, text: str, method: str, threshold: float | None,
                     top_k: int) -> list[CorpusHit]:
        try:
            matches = await self.service.search(tenant=tenant or PUBLIC, name=corpus, text=text,
                                                method=Method(method), threshold=threshold, top_k=top_k)
            names = await self.service.document_names(tenant=tenant or PUBLIC, name=corpus)
        except NotFoundError as exc:
            raise ToolFailed(str(exc)) from None
        return [CorpusHit(id=m.doc_id, name=names.get(m.doc_id), score=m.score,
                          passages=tuple(p.text for p in m.passages)) for m in matches]


@dataclass
class LocalExports:
    """`ExportPort` over an `ExportService` in process; ``hold`` keeps a call waiting after the job is stored
    (a replica that stops between a side effect and its record)."""

    service: ExportService
    calls: int = 0
    hold: asyncio.Event | None = None

    async def export(self, *, tenant: str | None, request: ExportRequest) -> ExportedFile:
        self.calls += 1
        job = await self.service.submit(request, owner=tenant)
        if self.hold is not None:
            await self.hold.wait()
        return ExportedFile(task_id=job.id, status=job.status.value, download_url=f"/export/{job.id}/download",
                            format=job.format)


@dataclass
class Flaky:
    """Wraps a port: its first ``failures`` calls of ``method`` raise `ToolUnavailable` (a service restarting)."""

    inner: object
    method: str
    failures: int
    calls: int = 0

    def __getattr__(self, name: str):
        target = getattr(self.inner, name)
        if name != self.method:
            return target

        async def call(**kwargs):
            self.calls += 1
            if self.calls <= self.failures:
                raise ToolUnavailable("the service is restarting")
            return await target(**kwargs)

        return call


@dataclass
class HeldLLM:
    """A `ScriptedLLM` whose call number ``hold_at`` (1-based) waits until ``release`` is set."""

    inner: ScriptedLLM
    hold_at: int | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[LLMRequestSpec] = field(default_factory=list)
    """Every request, the held one included."""
    calls: int = 0

    async def generate(self, spec: LLMRequestSpec) -> Generation:
        self.requests.append(spec)
        self.calls += 1
        if self.calls == self.hold_at:
            self.held.set()
            await self.release.wait()
        return await self.inner.generate(spec)

    def stream(self, spec: LLMRequestSpec):
        return self.inner.stream(spec)


async def wait_for(predicate, *, timeout_s: float = 20.0, poll_s: float = 0.02):
    """Await ``predicate()`` (async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(poll_s)
