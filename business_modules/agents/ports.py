"""What the agents' tools need from the other services, as protocols (no Ray here).

The Serve application passes implementations that call the `redundancy`,
`bul` and `export` applications through deployment handles, as the tenant of
the run (`deployments.agents.ports`); tests may pass ones over the business
services in process. A port raises `ToolUnavailable` when the service could
not be reached or timed out (worth a retry for an idempotent tool), and
`ToolFailed` when the service refused the request (e.g. no such corpus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from business_modules.bul import GenerateRequest
    from business_modules.export import ExportRequest


class ToolFailed(Exception):
    """The tool's call failed for a reason retrying will not change; the message is told to the model."""


class ToolUnavailable(ToolFailed):
    """The service behind the tool could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class CorpusHit:
    """A corpus document that matched: its score and what it says (snippet or matching passages)."""

    id: str
    name: str | None
    score: float
    snippet: str = ""
    passages: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WrittenDocument:
    """A BUL generation: its ids, where it stands, and its Markdown once completed."""

    task_id: str
    document_id: str
    status: str
    title: str
    markdown: str | None = None
    error: str | None = None
    document_url: str | None = None


@dataclass(frozen=True, slots=True)
class ExportedFile:
    """An Export job: its id, state and where to download the file."""

    task_id: str
    status: str
    download_url: str
    format: str


class CorpusPort(Protocol):
    """The tenant's document corpora (the redundancy service)."""

    async def list_corpora(self, *, tenant: str | None, limit: int) -> list[str]: ...

    async def search(self, *, tenant: str | None, corpus: str, text: str, method: str, threshold: float | None,
                     top_k: int) -> list[CorpusHit]: ...


class DocumentPort(Protocol):
    """Business documents written by the LLM (the BUL service)."""

    async def write(self, *, tenant: str | None, request: GenerateRequest, wait_s: float) -> WrittenDocument:
        """Submit a generation and wait up to ``wait_s`` for it (it goes on in BUL after that)."""
        ...


class ExportPort(Protocol):
    """Files rendered from Markdown (the export service)."""

    async def export(self, *, tenant: str | None, request: ExportRequest) -> ExportedFile: ...


@dataclass(frozen=True, slots=True)
class Services:
    """The ports a replica has; a tool whose port is missing is not offered to the model."""

    corpora: CorpusPort | None = None
    documents: DocumentPort | None = None
    exports: ExportPort | None = None
