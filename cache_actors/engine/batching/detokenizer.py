"""Text of a growing token sequence, released only when it can no longer change.

A streamed delta must never be taken back, so two kinds of tail are held:
an unfinished UTF-8 character (a byte-level tokenizer decodes half a
character as U+FFFD) and a tail that could still become a stop string
(``"Obs"`` while ``"Observation:"`` is a stop).
"""

from __future__ import annotations

from typing import Callable, Sequence

from cache_actors.engine.sampling import find_stop

_REPLACEMENT = "\ufffd"


def _held_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class IncrementalText:
    """Decodes all tokens so far and hands out the new, final part."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = tuple(s for s in stops if s)
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""  # the text so far (cut at a stop string once one is found)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that became final (maybe empty). Sets `stopped` on a stop string."""
        self._ids.append(token_id)
        full = self._decode(self._ids)
        if self._stops:
            cut = find_stop(full, self._stops)
            if cut is not None:
                self.stopped = True
                self.text = full[:cut]
                return self._release(len(self.text))
        self.text = full
        end = len(full)
        while end > self._emitted and full[end - 1] == _REPLACEMENT:
            end -= 1
        end -= _held_stop_prefix(full[:end], self._stops)
        return self._release(end)

    def flush(self) -> str:
        """Everything not yet released (the sequence ended for another reason than a stop string)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta
