"""Duplicate reports: one JSON-ready dict and its CSV rendering (one row per pair)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from business_modules.redundancy.models import Cluster, Method, Pair

CSV_COLUMNS = (
    "pair",
    "method",
    "score",
    "doc_a_id",
    "doc_a_name",
    "doc_b_id",
    "doc_b_name",
    "cluster_id",
    "canonical_id",
    "passages",
    "longest_passage_words",
    "longest_passage",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def build_report(
    *,
    corpus: str,
    method: Method,
    threshold: float,
    names: dict[str, str | None],
    pairs: list[Pair],
    clusters: list[Cluster],
    complete: bool,
    max_pairs: int,
    canonical_rule: str,
) -> dict[str, Any]:
    """The duplicate report of a corpus.

    `redundancy.duplicate_documents` counts documents that are in a cluster
    but not its canonical one (what deduplication would remove);
    `redundancy_pct` is that count over the corpus size.
    """
    total = len(names)
    duplicates = sum(len(c.members) - 1 for c in clusters)
    cluster_of = {m: c for c in clusters for m in c.members}
    listed = pairs[:max_pairs]
    return {
        "corpus": corpus,
        "method": method.value,
        "threshold": threshold,
        "canonical_rule": canonical_rule,
        "generated_at": datetime.now(UTC).isoformat(),
        "document_count": total,
        "pair_count": len(pairs),
        "pairs_truncated": len(listed) < len(pairs),
        "complete": complete,
        "redundancy": {
            "duplicate_documents": duplicates,
            "redundancy_pct": 100.0 * duplicates / total if total else 0.0,
            "clusters": len(clusters),
        },
        "pairs": [
            {
                "a": {"id": p.a, "name": names.get(p.a)},
                "b": {"id": p.b, "name": names.get(p.b)},
                "score": p.score,
                "method": p.method.value,
                "details": p.details,
                "cluster_id": cluster_of[p.a].id if p.a in cluster_of else None,
                "passages": [asdict(x) for x in p.passages],
            }
            for p in listed
        ],
        "clusters": [
            {
                "id": c.id,
                "canonical": {"id": c.canonical, "name": names.get(c.canonical)},
                "members": [{"id": m, "name": names.get(m)} for m in c.members],
                "size": len(c.members),
            }
            for c in clusters
        ],
    }


def _cell(value: str | None) -> str:
    """A user text as a CSV cell that spreadsheets will not run as a formula."""
    text = value or ""
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def report_csv(report: dict[str, Any]) -> str:
    """The report's pairs as CSV (header + one row per listed pair).

    Names and passage text are user content: a cell starting with = + - @
    (or a tab/CR) gets a leading apostrophe so spreadsheets show it as text.
    """
    canonical = {c["id"]: c["canonical"]["id"] for c in report["clusters"]}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, pair in enumerate(report["pairs"], start=1):
        passages = pair["passages"]
        longest = max(passages, key=lambda x: x["words"], default=None)
        writer.writerow(
            [
                i,
                pair["method"],
                f"{pair['score']:.6f}",
                pair["a"]["id"],
                _cell(pair["a"]["name"]),
                pair["b"]["id"],
                _cell(pair["b"]["name"]),
                pair["cluster_id"] or "",
                canonical.get(pair["cluster_id"], ""),
                len(passages),
                longest["words"] if longest else 0,
                _cell(longest["text"] if longest else ""),
            ]
        )
    return out.getvalue()
