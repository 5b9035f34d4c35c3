"""Serve application `llm`: the model behind an OpenAI-compatible API, with continuous batching,
structured output and cache-aware routing.

`build_llm(args)` builds the application (imports Ray only when called).
"""


def build_llm(args: dict | None = None):  # noqa: ANN201 - imports Ray only when called
    """The bound Serve application (see `deployments.llm.app`)."""
    from deployments.llm.app import build_llm as build

    return build(args)


__all__ = ["build_llm"]
