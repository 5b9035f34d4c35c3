"""Tools over the tenant's document corpora (the redundancy service): search them, check a text against one.

The ``corpus`` argument is narrowed to the names of the tenant's corpora
(listed when the run starts), so the model can only name corpora that exist,
and the grammar holds even a random-weight model to them. The calls go out as
the run's tenant: one tenant's run never reads another's documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from business_modules.agents.ports import CorpusHit, Services
from business_modules.agents.tools.base import Tool, ToolContext

SEARCH_METHOD = "semantic"
SEARCH_MIN_SCORE = 0.2
"""Cosine similarity under which a document is not a search hit."""
CHECK_METHOD = "containment"
SNIPPET_CHARS = 240
PASSAGE_CHARS = 160
CORPUS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
HAS_WORD = r"^\W{0,8}\w[\s\S]*$"
"""A text the redundancy service can read has a word (it refuses one without); the grammar holds the model to
it, so a random-weight model's query is a query, not a run of punctuation."""


class SearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(pattern=CORPUS_PATTERN, max_length=64)
    query: str = Field(min_length=1, max_length=300, pattern=HAS_WORD)
    top_k: int = Field(3, ge=1, le=5)


class CheckArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(pattern=CORPUS_PATTERN, max_length=64)
    text: str = Field(min_length=1, max_length=1000, pattern=HAS_WORD)


class _CorpusTool(Tool):
    service = "redundancy"
    uses_corpora = True

    def available(self, services: Services, corpora: Sequence[str]) -> bool:
        return services.corpora is not None and bool(corpora)

    def parameters(self, corpora: Sequence[str]) -> dict[str, Any]:
        schema = super().parameters(corpora)
        corpus = {k: v for k, v in schema["properties"]["corpus"].items() if k not in ("pattern", "maxLength")}
        schema["properties"] = {**schema["properties"], "corpus": {**corpus, "enum": list(corpora)}}
        return schema

    def parse(self, arguments: Any, corpora: Sequence[str]) -> BaseModel:
        args = super().parse(arguments, corpora)
        if getattr(args, "corpus") not in corpora:
            raise ValueError(f"corpus {getattr(args, 'corpus')!r} is not one of this tenant's: "
                             f"{', '.join(corpora) or 'none'}")
        return args


class SearchDocuments(_CorpusTool):
    name = "search_documents"
    description = "Search one of your document corpora; returns the best matches with a snippet."
    args_model = SearchArgs

    async def run(self, args: SearchArgs, ctx: ToolContext) -> dict[str, Any]:
        assert ctx.services.corpora is not None
        hits = await ctx.services.corpora.search(tenant=ctx.tenant, corpus=args.corpus, text=args.query,
                                                 method=SEARCH_METHOD, threshold=SEARCH_MIN_SCORE, top_k=args.top_k)
        return {"corpus": args.corpus, "matches": [_hit(h, passages=False) for h in hits[: args.top_k]]}


class CheckText(_CorpusTool):
    name = "check_text"
    description = "Check whether a text copies documents of a corpus; returns the matching passages."
    args_model = CheckArgs

    async def run(self, args: CheckArgs, ctx: ToolContext) -> dict[str, Any]:
        assert ctx.services.corpora is not None
        hits = await ctx.services.corpora.search(tenant=ctx.tenant, corpus=args.corpus, text=args.text,
                                                 method=CHECK_METHOD, threshold=None, top_k=3)
        return {"corpus": args.corpus, "duplicates": bool(hits),
                "matches": [_hit(h, passages=True) for h in hits[:3]]}


def _hit(hit: CorpusHit, *, passages: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": hit.id, "name": hit.name, "score": round(hit.score, 3)}
    if passages:
        out["passages"] = [p[:PASSAGE_CHARS] for p in hit.passages[:2]]
    else:
        out["snippet"] = hit.snippet[:SNIPPET_CHARS]
    return out


__all__ = ["CheckText", "SearchDocuments"]
