"""Domain exceptions of BUL, each with a stable ``code`` the HTTP adapter maps in one place."""

from __future__ import annotations


class BulError(Exception):
    """Base class of every BUL error."""

    code = "bul_error"


class InvalidRequestError(BulError, ValueError):
    """The request or its inputs do not fit the document type's schema (caller error)."""

    code = "invalid_inputs"


class InputTooLargeError(InvalidRequestError):
    """The request exceeds a size limit from `constants`."""

    code = "content_too_large"


class UnknownDocumentTypeError(InvalidRequestError):
    """No document type by that name."""

    code = "unknown_document_type"


class TaskNotFoundError(BulError, LookupError):
    """No task with that id (or not the caller's)."""

    code = "task_not_found"


class DocumentNotFoundError(BulError, LookupError):
    """No document (or version, or section) with that id (or not the caller's)."""

    code = "document_not_found"


class DocumentNotReadyError(BulError):
    """The document has no version yet (its generation is unfinished or failed)."""

    code = "document_not_ready"


class TaskFinishedError(BulError):
    """The task already ended; it cannot be cancelled."""

    code = "task_finished"


class BulBusyError(BulError):
    """The tenant already has its maximum of unfinished tasks on this replica; retry later."""

    code = "too_many_jobs"


class OutlineError(BulError):
    """The LLM's outline was not the JSON the schema asks for."""

    code = "invalid_outline"


class RenderFailedError(BulError):
    """A download render failed or ran past its timeout."""

    code = "render_failed"
