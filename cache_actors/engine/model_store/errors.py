"""The one error a model pull raises.

A pull touches the network, pip, a zip file and transformers; each failure is
turned into a `ModelPullError` whose message is ONE line that says what went
wrong and what to do, so the CLI can print it after `blatam model pull:` and
the engine can show it where a model is resolved.
"""

from __future__ import annotations


class ModelPullError(RuntimeError):
    """A model could not be pulled, installed or resolved. The message is one line."""

    def __init__(self, message: str) -> None:
        # NOTE: callers print str(exc) as is; a multi-line pip or transformers message must be folded here.
        super().__init__(" ".join(message.split()))


class IndexUnreachableError(ModelPullError):
    """pip could not reach its package index (or it stalled): the network, not the model, is at fault.

    A separate type so that callers that can live without the model (the
    real-model tests) skip on this one and fail on every other pull error.
    """
