"""Request and response shapes of the redundancy HTTP API (pydantic v2)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from business_modules.redundancy import CanonicalRule, Method

MAX_CONTENT_CHARS = 50_000
CORPUS_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
MAX_METADATA_KEYS = 32

Content = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
Threshold = Field(0.8, ge=0.0, le=1.0)


class _Strict(BaseModel):
    """Unknown fields are refused (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid")


class AnalyzeIn(_Strict):
    content: str = Content
    threshold: float = Threshold


class AnalyzeOut(BaseModel):
    content_hash: str
    word_count: int
    character_count: int
    unique_words: int
    redundancy_score: float
    is_redundant: bool
    analysis_time: float
    timestamp: str


class SimilarityIn(_Strict):
    text1: str = Content
    text2: str = Content
    threshold: float = Threshold


class SimilarityOut(BaseModel):
    similarity_score: float
    is_similar: bool
    common_words: list[str]
    common_word_count: int


class QualityIn(_Strict):
    content: str = Content


class QualityOut(BaseModel):
    readability_score: float
    complexity_score: float
    quality_rating: str
    suggestions: list[str]
    word_count: int
    sentence_count: int
    average_sentence_length: float
    average_syllables_per_word: float


class CorpusIn(_Strict):
    name: str = Field(pattern=CORPUS_NAME_PATTERN, description="letters, digits, _ . -; up to 64")
    description: str = Field("", max_length=1000)


class CorpusOut(BaseModel):
    id: str
    name: str
    description: str
    document_count: int
    revision: int
    created_at: str
    updated_at: str


class CorpusList(BaseModel):
    corpora: list[CorpusOut]


class DocumentIn(_Strict):
    text: str = Content
    name: str | None = Field(None, min_length=1, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        return value


class DocumentsIn(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentOut(BaseModel):
    id: str
    seq: int
    name: str | None
    content_hash: str
    word_count: int
    char_count: int
    metadata: dict[str, Any]
    created_at: str
    text: str | None = None


class DocumentList(BaseModel):
    documents: list[DocumentOut]


class DuplicatesIn(_Strict):
    method: Method = Method.NEAR
    threshold: float | None = Field(None, gt=0.0, le=1.0, description="default: the method's default")
    canonical: CanonicalRule = CanonicalRule.EARLIEST
    passages: bool = True
    max_pairs: int | None = Field(None, ge=1, le=100_000)


class SearchIn(_Strict):
    text: str = Content
    method: Method = Method.CONTAINMENT
    threshold: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int = Field(10, ge=1, le=1000)
    passages: bool = True


class PassageOut(BaseModel):
    a_start: int
    a_end: int
    b_start: int
    b_end: int
    words: int
    text: str


class MatchOut(BaseModel):
    id: str
    name: str | None
    score: float
    method: Method
    details: dict[str, float]
    passages: list[PassageOut]


class SearchOut(BaseModel):
    method: Method
    threshold: float
    matches: list[MatchOut]
