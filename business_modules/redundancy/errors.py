"""Domain errors of the redundancy detector; the HTTP adapter maps each to one status."""

from __future__ import annotations


class RedundancyError(Exception):
    """Base class: `code` is the stable machine-readable name used in error bodies."""

    code = "redundancy_error"


class InvalidInputError(RedundancyError, ValueError):
    """The input is well-formed but unusable (e.g. a text with no words)."""

    code = "invalid_input"


class LimitExceededError(RedundancyError):
    """A size limit (documents per corpus, per request) would be exceeded."""

    code = "limit_exceeded"


class NotFoundError(RedundancyError):
    """A named corpus or document does not exist (for this tenant)."""

    code = "not_found"


class ConflictError(RedundancyError):
    """A corpus or document name is already taken."""

    code = "conflict"
