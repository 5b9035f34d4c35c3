"""Per-document features: word shingles and their MinHash signature.

A signature is stored with the document (datasketch's own LeanMinHash
serialisation, which records seed, scheme and length), so an index can be
rebuilt from the database without rehashing every text. A stored signature
made with other settings is recomputed rather than mixed in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from datasketch import LeanMinHash, MinHash

from business_modules.redundancy.text import shingles, words


@dataclass(frozen=True, slots=True)
class Features:
    """What near and containment need of one text."""

    shingles: frozenset[str]
    minhash: LeanMinHash
    word_count: int


class Featurizer:
    """Turns texts into `Features` with one fixed shingle size and MinHash family."""

    def __init__(self, *, shingle_words: int = 3, num_perm: int = 128, seed: int = 1) -> None:
        self.shingle_words = shingle_words
        self.num_perm = num_perm
        self.seed = seed

    def features(self, text: str) -> Features:
        """Shingles and MinHash of `text` (computed from its normalised words)."""
        word_list = words(text)
        shingle_set = frozenset(shingles(word_list, self.shingle_words))
        return Features(shingle_set, self.minhash(shingle_set), len(word_list))

    def minhash(self, shingle_set: frozenset[str]) -> LeanMinHash:
        """The MinHash signature of a shingle set."""
        sketch = MinHash(num_perm=self.num_perm, seed=self.seed)
        sketch.update_batch([s.encode("utf-8") for s in shingle_set])
        return LeanMinHash(sketch)

    def with_stored_minhash(self, text: str, blob: bytes) -> Features:
        """Features of `text` reusing a stored signature (falls back to recomputing it).

        A blob that does not decode, or was made with another seed or `num_perm`, is ignored and the
        signature recomputed, so a settings change cannot corrupt an index.
        """
        word_list = words(text)
        shingle_set = frozenset(shingles(word_list, self.shingle_words))
        try:
            sketch = LeanMinHash.deserialize(blob)
        except (ValueError, TypeError, struct.error):
            sketch = None
        if sketch is None or sketch.seed != self.seed or len(sketch) != self.num_perm:
            sketch = self.minhash(shingle_set)
        return Features(shingle_set, sketch, len(word_list))

    @staticmethod
    def minhash_bytes(sketch: LeanMinHash) -> bytes:
        """Signature as datasketch's serialisation (what the repository stores)."""
        buf = bytearray(sketch.bytesize())
        sketch.serialize(buf)
        return bytes(buf)
