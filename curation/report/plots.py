"""Report figures: matplotlib (Agg) PNGs as base64 data URIs, byte-identical for the same numbers."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from curation.report.stats import FunnelStep

MAX_OVERLAID = 8  # sources drawn per histogram; more are summed into "other"


def png_data_uri(fig: Figure) -> str:
    """The figure as a PNG data URI, without the software/timestamp metadata, then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram(dist: dict[str, Any]) -> str:
    """Bars per bin, the sources side by side (log y when the counts span more than two decades)."""
    labels, sources = dist["labels"], dict(sorted(dist["sources"].items(), key=lambda kv: -kv[1]["n"]))
    series = list(sources.items())[:MAX_OVERLAID]
    rest = list(sources.values())[MAX_OVERLAID:]
    if rest:
        series.append(("other", {"counts": [sum(c) for c in zip(*(r["counts"] for r in rest), strict=True)]}))
    if not series:
        series = [("all", dist["overall"])]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(series)
    for i, (name, cell) in enumerate(series):
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(labels))]
        ax.bar(xs, cell["counts"], width=width, label=name)
    counts = [c for _, cell in series for c in cell["counts"] if c]
    if counts and max(counts) > 100 * min(counts):
        ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(dist["title"], fontsize=10)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def funnel(source: str, steps: list[FunnelStep]) -> str:
    """Samples remaining after each step (bars), the first step's input as the leftmost bar."""
    if not steps:
        return ""
    names = ["input"] + [s.step for s in steps]
    values = [steps[0].input] + [s.output for s in steps]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1))
    ax.barh(range(len(names)), values, color="#4c72b0")
    for y, (v, s) in enumerate(zip(values, [None, *steps], strict=True)):
        dropped = sum(s.dropped.values()) if s else 0
        ax.text(v, y, f" {v:,}" + (f"  (−{dropped:,})" if dropped else ""), va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max([*values, 1]) * 1.25)
    ax.set_title(f"{source}: samples after each step", fontsize=10)
    return png_data_uri(fig)


def share_bars(rows: dict[str, dict[str, Any]], achieved: str, target: str | None = None, title: str = "") -> str:
    """Horizontal bars of each row's achieved share (and its target beside it when given)."""
    names = list(rows)
    if not names:
        return ""
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1))
    ys = range(len(names))
    has_target = target is not None and any(rows[n].get(target) is not None for n in names)
    h = 0.4 if has_target else 0.8
    shift = h / 2 if has_target else 0
    ax.barh([y - shift for y in ys], [rows[n][achieved] or 0 for n in names], h, label="achieved")
    if has_target and target is not None:  # (has_target implies it; this tells the type checker)
        ax.barh([y + h / 2 for y in ys], [rows[n].get(target) or 0 for n in names], h, label="target")
        ax.legend(fontsize=8)
    labels = [f"{n} ({rows[n]['category']})" if rows[n].get("category") else n for n in names]
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of answer tokens")
    ax.set_title(title, fontsize=10)
    return png_data_uri(fig)
