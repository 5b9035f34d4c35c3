"""Typed values passed between the repository, the detectors and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from business_modules.redundancy.passages import Passage


class Method(StrEnum):
    """Duplicate detection methods, from strictest to loosest.

    - exact: same sha256 of the normalised text.
    - near: Jaccard of word-shingle sets (MinHash LSH candidates, exact check).
    - containment: share of one document's shingles found in another
      (MinHash LSH Ensemble candidates, exact check); finds partial reuse.
    - semantic: cosine of all-MiniLM-L6-v2 document embeddings; finds paraphrase.
    """

    EXACT = "exact"
    NEAR = "near"
    CONTAINMENT = "containment"
    SEMANTIC = "semantic"


class CanonicalRule(StrEnum):
    """Which member of a duplicate cluster is kept as its canonical document.

    - earliest: the first document added to the corpus (lowest `seq`): in a
      dedup pipeline the first seen is the one others copied or re-sent.
    - longest: the document with most words (ties: the earliest), which keeps
      the most content when members are partial copies of each other.
    """

    EARLIEST = "earliest"
    LONGEST = "longest"


@dataclass(frozen=True, slots=True)
class NewDocument:
    """A document to add: its text, an optional name unique in the corpus, metadata."""

    text: str
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """A stored corpus. `revision` grows on every change of its documents."""

    id: str
    tenant: str
    name: str
    description: str
    created_at: str
    updated_at: str
    revision: int
    document_count: int


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A stored document. `seq` orders documents by the time they were added."""

    id: str
    corpus_id: str
    seq: int
    name: str | None
    text: str
    content_hash: str
    word_count: int
    char_count: int
    metadata: dict[str, Any]
    created_at: str


@dataclass(frozen=True, slots=True)
class Match:
    """A corpus document that matches a query text, with its score and evidence."""

    doc_id: str
    score: float
    method: Method
    details: dict[str, float] = field(default_factory=dict)
    passages: list[Passage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Pair:
    """Two corpus documents found duplicate; `a` was added before `b`."""

    a: str
    b: str
    score: float
    method: Method
    details: dict[str, float] = field(default_factory=dict)
    passages: list[Passage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Cluster:
    """Documents joined by pairs (transitively), with the one to keep."""

    id: int
    canonical: str
    members: list[str]
