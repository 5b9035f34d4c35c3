"""Domain exceptions of the export module.

Each carries a stable machine-readable ``code`` so the HTTP adapter can map
them to a status and the uniform error body in one place.
"""

from __future__ import annotations


class ExportError(Exception):
    """Base class of every export error."""

    code = "export_error"


class InvalidContentError(ExportError, ValueError):
    """The caller's content or options cannot be exported (caller error)."""

    code = "invalid_content"


class ContentTooLargeError(InvalidContentError):
    """The content exceeds a size limit from `constants`."""

    code = "content_too_large"


class JobNotFoundError(ExportError, LookupError):
    """No job with that id (or not visible to this owner)."""

    code = "job_not_found"


class JobNotReadyError(ExportError):
    """The job has not completed, so there is nothing to download yet."""

    code = "job_not_ready"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"export job {job_id} is {status}; download is available once it is completed")
        self.job_id = job_id
        self.status = status


class JobFailedError(JobNotReadyError):
    """The job failed, so it will never have a result."""

    code = "job_failed"

    def __init__(self, job_id: str, error: str | None) -> None:
        ExportError.__init__(self, f"export job {job_id} failed: {error or 'unknown error'}")
        self.job_id = job_id
        self.status = "failed"


class ResultGoneError(ExportError):
    """The job completed but its result expired or its file is missing."""

    code = "result_gone"


class RenderError(ExportError):
    """A renderer failed on content that passed validation (our fault or a library's)."""

    code = "render_failed"


class RenderTimeoutError(RenderError):
    """A render ran past `constants.RENDER_TIMEOUT_S`."""

    code = "render_timeout"


class ExportBusyError(ExportError):
    """This replica already holds its maximum of unfinished jobs; retry later."""

    code = "export_busy"
