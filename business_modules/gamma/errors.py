"""Domain exceptions of Gamma; each has a stable ``code`` the HTTP adapter maps once."""

from __future__ import annotations


class GammaError(Exception):
    """Base class of every Gamma error."""

    code = "gamma_error"


class InvalidInputError(GammaError, ValueError):
    """The caller's input cannot be turned into a generation (caller error)."""

    code = "invalid_input"


class GenerationNotFoundError(GammaError, LookupError):
    """No generation with that id visible to this caller (another tenant's ids are not found either)."""

    code = "generation_not_found"


class GenerationNotReadyError(GammaError):
    """The generation has not completed, so it has no cards, charts or files yet."""

    code = "generation_not_ready"

    def __init__(self, generation_id: str, status: str, error: str | None = None) -> None:
        detail = f": {error}" if error else ""
        super().__init__(f"generation {generation_id} is {status}{detail}")
        self.generation_id = generation_id
        self.status = status


class GenerationFailedError(GammaError):
    """The generation ended ``failed`` (its reason is the message)."""

    code = "generation_failed"


class GenerationTimeoutError(GammaError):
    """The synchronous endpoint stopped waiting; the generation goes on and can be polled."""

    code = "generation_timeout"


class GammaBusyError(GammaError):
    """This replica already holds its maximum of unfinished generations; retry later."""

    code = "gamma_busy"


class GenerationOutputError(GammaError):
    """The LLM's answer did not match its schema (a job failure, never a caller error)."""

    code = "llm_output_invalid"
