"""Charts from numbers the user wrote, never from the model.

`find_series` reads ``label: number`` pairs from the input, one per line or
separated by ``;`` or ``", "`` (``Q1: 120``, ``- North 12.5%``, ``Revenue
2024 = $1,200``). At least `MIN_CHART_POINTS` pairs with distinct labels and
the same unit make a series; the first series found wins and keeps at most
`MAX_CHART_POINTS` points. `draw_chart` draws it with matplotlib's Agg
backend (no display) as PNG or SVG; text is not parsed as mathtext, so a
label such as ``$5 $6`` stays text.
"""

from __future__ import annotations

import io
import re
import threading

from business_modules.gamma import constants as C
from business_modules.gamma.models import Chart

_PAIR = re.compile(
    r"^\s*(?:[-*•]\s+)?(?P<label>[^\n:=]{1,40}?)\s*(?:[:=]|\s[-–—]\s|\s)\s*(?P<currency>[$€£])?\s*"
    r"(?P<number>[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?)\s*"
    r"(?P<unit>%|k|m|bn|million|billion|thousand|units|users|customers|hours|days)?\s*\.?\s*$",
    re.IGNORECASE,
)
_SEGMENTS = re.compile(r"\n|;|,\s+")
_LOCK = threading.Lock()  # pyplot's state is global; one figure at a time


def find_series(text: str) -> Chart | None:
    """The first series of ``label: number`` pairs in ``text``, or None."""
    labels: list[str] = []
    values: list[float] = []
    sources: list[str] = []
    unit: str | None = None
    best: Chart | None = None
    for segment in _SEGMENTS.split(text):
        match = _PAIR.match(segment)
        if match is None or not re.search(r"[A-Za-z]", match["label"]):
            if len(labels) >= C.MIN_CHART_POINTS and best is None:
                best = Chart(labels=labels, values=values, unit=unit or "", source=sources)
            labels, values, sources, unit = [], [], [], None
            continue
        this_unit = ((match["currency"] or "") + (match["unit"] or "")).lower()
        label = " ".join(match["label"].split()).rstrip(" -–—")
        if (unit is not None and this_unit != unit) or label in labels:
            if len(labels) >= C.MIN_CHART_POINTS and best is None:
                best = Chart(labels=labels, values=values, unit=unit or "", source=sources)
            labels, values, sources = [], [], []
        unit = this_unit
        if len(labels) < C.MAX_CHART_POINTS:
            labels.append(label)
            values.append(float(match["number"].replace(",", "")))
            sources.append(segment.strip())
    if best is None and len(labels) >= C.MIN_CHART_POINTS:
        best = Chart(labels=labels, values=values, unit=unit or "", source=sources)
    return best


def draw_chart(chart: Chart, *, fmt: str = "png", title: str = "", colour: str = "#2E75B6") -> bytes:
    """The chart as PNG or SVG bytes (blocking; run it in a thread from async code)."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"charts are drawn as png or svg, not {fmt!r}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with _LOCK, matplotlib.rc_context({"text.parse_math": False, "svg.hashsalt": "blatam", "svg.fonttype": "path"}):
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        try:
            positions = range(len(chart.values))
            ax.bar(positions, chart.values, color=colour)
            ax.set_xticks(list(positions), chart.labels, rotation=20 if len(chart.labels) > 5 else 0, ha="right"
                          if len(chart.labels) > 5 else "center")
            if chart.unit:
                ax.set_ylabel(chart.unit)
            if title:
                ax.set_title(title)
            for spine in ("top", "right"):
                ax.spines[spine].set_visible(False)
            for x, value in zip(positions, chart.values):
                ax.annotate(f"{value:g}", (x, value), ha="center", va="bottom", fontsize=8)
            fig.tight_layout()
            out = io.BytesIO()
            fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            return out.getvalue()
        finally:
            plt.close(fig)
