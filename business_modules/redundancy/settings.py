"""Tunables of the redundancy detector, one pydantic settings model.

Every field reads an environment variable ``REDUNDANCY_<FIELD>``. Default
thresholds, none of them looked up on the Clough benchmark:

- containment 0.07: calibrated for "reused or not" on the synthetic set of
  `calibration.py` (built from Python's bundled documentation); the tests
  re-run that calibration and check it still gives this number.
- near 0.5: near-duplicates share at least half of their word 3-grams. With
  3-grams a text whose words are 10 % edited keeps about 0.9³ ≈ 73 % of them
  (Jaccard ≈ 0.57), so 0.5 catches light edits and leaves partial reuse to
  the containment method (on the synthetic reuse task Jaccard needs 0.04,
  i.e. it is the wrong tool for it).
- semantic 0.8: "says the same thing" in all-MiniLM-L6-v2 cosine (a
  paraphrase pair scores about 0.94, texts on the same topic 0.4–0.8).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from business_modules.redundancy.models import Method


class RedundancySettings(BaseSettings):
    """Limits, index parameters and default thresholds per method."""

    model_config = SettingsConfigDict(env_prefix="REDUNDANCY_", frozen=True)

    shingle_words: int = Field(3, ge=1, le=10, description="word n-gram size for near/containment")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    minhash_seed: int = Field(1, description="MinHash seed; stored signatures depend on it")
    near_threshold: float = Field(0.50, gt=0, le=1, description="Jaccard of word shingles")
    containment_threshold: float = Field(0.07, gt=0, le=1, description="share of a document's shingles found in another")
    semantic_threshold: float = Field(0.80, gt=0, le=1, description="cosine of document embeddings")
    max_content_chars: int = Field(50_000, ge=1)
    max_documents_per_request: int = Field(500, ge=1)
    max_documents_per_corpus: int = Field(20_000, ge=1)
    max_pairs: int = Field(10_000, ge=1, description="pairs returned by one duplicate search")
    passage_min_words: int = Field(3, ge=1)
    max_passages: int = Field(20, ge=0)
    embedding_chunk_words: int = Field(150, ge=16, description="words per chunk fed to the encoder")
    cached_corpora: int = Field(16, ge=1, description="corpus indexes kept in memory per process")

    def default_threshold(self, method: Method) -> float:
        """The default threshold of `method` (exact has none: 1.0)."""
        return {
            Method.EXACT: 1.0,
            Method.NEAR: self.near_threshold,
            Method.CONTAINMENT: self.containment_threshold,
            Method.SEMANTIC: self.semantic_threshold,
        }[method]
