"""The options of the `llm` app's OpenAI API, read from its settings: the same wherever the app is built.

The API is built in three places (the model replicas themselves, the
`LLMIngress` in front of them, the gateway's ``/v1``); all take these
options, so the model id, context and limits they announce agree.
"""

from __future__ import annotations

from typing import Any

from cache_actors.engine.model_runner import model_identity
from deployments.llm.settings import LLMSettings

DEMO_NOTE = ("the built-in demo model (random weights): its answers are not readable text; "
             "`blatam up --model smollm2` or `model_path` serves a real model")


def openai_options(settings: LLMSettings) -> dict[str, Any]:
    """The `build_openai_app` options these settings give."""
    model_id, context = model_identity(settings.model_path)
    return {"model_id": settings.served_model_name or model_id, "max_context": min(context, settings.max_model_len),
            "max_tokens_limit": settings.max_tokens_limit, "model_info": model_info(settings),
            "version": blatam_version()}


def blatam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blatam")
    except PackageNotFoundError:
        return "unknown"


def model_info(settings: LLMSettings) -> dict[str, Any]:
    """What kind of model is served and why, for /health and /v1/models."""
    kind = "demo" if settings.model_path is None else "huggingface"
    note = settings.model_note or (DEMO_NOTE if kind == "demo" else None)
    return {"kind": kind, **({"note": note} if note else {})}
