"""Gamma: presentations, documents, web pages and social posts as cards written by the LLM.

Pure Python (no Ray). A request (Gamma's generations shape, or the original
``/content/generate``) becomes a `GenerationPlan`; `GammaService` runs it as
a job with a lease: an outline, then one schema-bound LLM call per card
(prompts laid out for KV reuse, `prompts`), charts only from numbers in the
input (`charts`), HTML through autoescaped Jinja2 and files through Export's
renderer (`render`), a documented quality score (`quality`).

    service = GammaService(db=db, llm=llm_client)
    row = await service.submit(GenerationPlan.from_generation(request), request_json=..., owner="acme")
"""

from business_modules.gamma.config import GammaSettings
from business_modules.gamma.errors import (
    GammaBusyError,
    GammaError,
    GenerationFailedError,
    GenerationNotFoundError,
    GenerationNotReadyError,
    GenerationOutputError,
    GenerationTimeoutError,
    InvalidInputError,
)
from business_modules.gamma.kinds import (
    CardSplit,
    ContentLength,
    ContentType,
    GammaFormat,
    JobStatus,
    Layout,
    OutputFormat,
    TextAmount,
    TextMode,
)
from business_modules.gamma.models import Card, Chart, ContentRequest, Deck, GenerationPlan, GenerationRequest
from business_modules.gamma.quality import QualityReport, assess
from business_modules.gamma.render import EXPORT_FORMATS, render_html, render_markdown, render_text
from business_modules.gamma.repository import GenerationRow
from business_modules.gamma.service import GammaService

__all__ = [
    "EXPORT_FORMATS",
    "Card",
    "CardSplit",
    "Chart",
    "ContentLength",
    "ContentRequest",
    "ContentType",
    "Deck",
    "GammaBusyError",
    "GammaError",
    "GammaFormat",
    "GammaService",
    "GammaSettings",
    "GenerationFailedError",
    "GenerationNotFoundError",
    "GenerationNotReadyError",
    "GenerationOutputError",
    "GenerationPlan",
    "GenerationRequest",
    "GenerationRow",
    "GenerationTimeoutError",
    "InvalidInputError",
    "JobStatus",
    "Layout",
    "OutputFormat",
    "QualityReport",
    "TextAmount",
    "TextMode",
    "assess",
    "render_html",
    "render_markdown",
    "render_text",
]
