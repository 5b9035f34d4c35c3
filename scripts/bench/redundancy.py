"""`blatam bench redundancy`: reuse detection on a Clough & Stevenson-style corpus.

Each answer is searched, by every method, against an index of the task
sources (`orig_task*`); it counts as "reused" when its own task's source
comes back at the method's threshold. Precision, recall and F1 are for
reused (cut, light, heavy) vs not (non); per category, the recall of cut,
light and heavy and the false-positive rate on non.

Thresholds never come from the labels being scored: by default the values
calibrated once on the synthetic set of `business_modules.redundancy.calibration`
(`CALIBRATED_THRESHOLDS`); `--calibrate` recomputes them now on that set.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from scripts.bench import bench_app
from scripts.bench.report import console, print_table, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "clough"
REUSED = ("cut", "light", "heavy")

if TYPE_CHECKING:  # numpy, the embedding model: loaded inside the command, not for `blatam --help`
    from business_modules.redundancy import Detector, Method


@dataclass(frozen=True, slots=True)
class Answer:
    """One labelled answer of the corpus."""

    file: str
    task: str
    category: str
    text: str


def read_text(path: Path) -> str:
    """A corpus file as text: UTF-8, else Windows-1252 (17 Clough files are cp1252)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def load_corpus(data: Path) -> tuple[dict[str, str], list[Answer]]:
    """(sources by task, answers) from `file_information.csv` and the text files."""
    index_file = data / "file_information.csv"
    if not index_file.is_file():
        raise typer.BadParameter(f"{index_file} not found: --data must be a Clough-layout folder")
    sources: dict[str, str] = {}
    answers: list[Answer] = []
    with index_file.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            category = row["Category"].strip()
            task = row["Task"].strip()
            if category == "orig":
                continue
            answers.append(Answer(row["File"], task, category, read_text(data / row["File"])))
    for task in sorted({a.task for a in answers}):
        sources[task] = read_text(data / f"orig_task{task}.txt")
    return sources, answers


def evaluate(
    detector: Detector, sources: dict[str, str], answers: list[Answer], method: Method, threshold: float
) -> dict[str, Any]:
    """Scores of one method at one threshold on the labelled answers."""
    from business_modules.redundancy.calibration import f1_at

    index = detector.new_index()
    for seq, (task, text) in enumerate(sources.items()):
        index.add(detector.indexed(doc_id=task, seq=seq, text=text, name=f"orig_task{task}"))
    started = time.perf_counter()
    flagged = []
    for answer in answers:
        matches = detector.search(index, answer.text, method, threshold, top_k=None, passages=False)
        flagged.append(any(m.doc_id == answer.task for m in matches))
    elapsed = time.perf_counter() - started
    labels = [a.category in REUSED for a in answers]
    scores = [1.0 if f else 0.0 for f in flagged]
    precision, recall, f1 = f1_at(scores, labels, 0.5)
    categories = {}
    for category in sorted({a.category for a in answers}):
        hits = [f for f, a in zip(flagged, answers, strict=True) if a.category == category]
        key = "false_positive_rate" if category not in REUSED else "recall"
        categories[category] = {key: sum(hits) / len(hits), "count": len(hits), "flagged": sum(hits)}
    return {
        "method": method.value,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "threshold": threshold,
        "flagged": sum(flagged),
        "ms_per_query": 1000 * elapsed / len(answers),
        "categories": categories,
        "missed": [a.file for f, a in zip(flagged, answers, strict=True) if a.category in REUSED and not f],
        "false_positives": [a.file for f, a in zip(flagged, answers, strict=True) if a.category not in REUSED and f],
    }


@bench_app.command("redundancy")
def bench_redundancy(
    data: Path = typer.Option(DEFAULT_DATA, "--data", help="folder in the Clough & Stevenson layout"),
    json_out: Path | None = typer.Option(None, "--json", help="write the results here"),
    methods: str = typer.Option("exact,near,containment,semantic", help="comma-separated methods"),
    recalibrate: bool = typer.Option(False, "--calibrate", help="recompute thresholds on the synthetic set"),
) -> None:
    """Precision/recall/F1 of each duplicate method for "reused vs not"."""
    with console.status("importing the redundancy detector"):
        from business_modules.redundancy import Detector, Method, RedundancySettings
        from business_modules.redundancy.calibration import CALIBRATED_THRESHOLDS, calibrate
        from business_modules.redundancy.embeddings import shared_encoder
    try:
        chosen = [Method(m.strip()) for m in methods.split(",") if m.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}; choose from {', '.join(m.value for m in Method)}") from exc
    sources, answers = load_corpus(data)
    with console.status("loading the embedding model" if Method.SEMANTIC in chosen else "building the detector"):
        detector = Detector(RedundancySettings(), shared_encoder() if Method.SEMANTIC in chosen else None)
    if recalibrate:
        console.print("[dim]calibrating thresholds on the synthetic set...[/dim]")
        thresholds, source = calibrate(detector, chosen), "synthetic set, calibrated in this run"
    else:
        thresholds, source = dict(CALIBRATED_THRESHOLDS), "synthetic set (CALIBRATED_THRESHOLDS)"
    results = [evaluate(detector, sources, answers, m, thresholds[m]) for m in chosen]
    print_table(
        f"Reuse detection on {data.name}: {len(answers)} answers, reused = cut+light+heavy",
        ["method", "threshold", "precision", "recall", "F1", "cut", "light", "heavy", "non FPR", "ms/query"],
        [
            [
                r["method"],
                r["threshold"],
                r["precision"],
                r["recall"],
                r["f1"],
                *(r["categories"].get(c, {}).get("recall", 0.0) for c in REUSED),
                r["categories"].get("non", {}).get("false_positive_rate", 0.0),
                r["ms_per_query"],
            ]
            for r in results
        ],
    )
    best = max(results, key=lambda r: r["f1"])
    console.print(f"best: {best['method']} F1 {best['f1']:.3f} (goal >= 0.95); thresholds from {source}")
    write_json(
        json_out,
        {
            "benchmark": "redundancy",
            "data": str(data),
            "answers": len(answers),
            "threshold_source": source,
            "methods": [
                {k: r[k] for k in ("method", "precision", "recall", "f1", "threshold", "flagged", "ms_per_query")}
                for r in results
            ],
            "categories": {r["method"]: r["categories"] for r in results},
            "errors": {r["method"]: {"missed": r["missed"], "false_positives": r["false_positives"]} for r in results},
            "best": {"method": best["method"], "f1": best["f1"], "goal": 0.95, "met": best["f1"] >= 0.95},
        },
    )
