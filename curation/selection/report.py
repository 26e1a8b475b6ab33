"""Selection reports: ``report.json`` (per category, each candidate's name, score, baseline score and decision),
``report.md`` and a self-contained ``report.html``, the baseline's progression across categories as a plot
(like the paper's Figure 4), and the selected mixture written out as a recipe."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import yaml

from curation.report.blocks import Section, render_html, render_markdown
from shards.atomic import atomic_write_bytes, atomic_write_json


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def progression_plot(doc: dict[str, Any]) -> bytes:
    """PNG of the baseline's score after each category (and the all-candidates trial, when run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in doc["progression"]]
    scores = [p["score"] for p in doc["progression"]]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(steps)), 3.2), dpi=100)
    ax.plot(range(len(steps)), scores, marker="o", color="#1f77b4", label="baseline after each category")
    if doc.get("all_candidates", {}).get("score") is not None:
        ax.axhline(doc["all_candidates"]["score"], color="#d62728", linestyle="--", label="all candidates")
    ax.set_xticks(range(len(steps)), steps, rotation=20, ha="right")
    ax.set_ylabel("score")
    ax.set_title(f"{doc['name']}: Individual Select")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _interval(c: dict[str, Any]) -> str:
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return "—"
    return f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"


def _overlap(found: dict[str, Any] | None) -> str:
    """A candidate's benchmark overlap in one cell: samples, or why it was not checked."""
    if not found or not found.get("checked"):
        return "not checked"
    return str(found["samples"]) if found["samples"] else "none"


_REASONS = {"failed": " (trial failed)", "undecided": " (undecided: the delta decided)"}


def _summary(doc: dict[str, Any]) -> str:
    d = doc.get("decision") or {"rule": "tolerance", "tolerance": doc["tolerance"]}
    rule = f"rule {d['rule']}, tolerance {d['tolerance']}"
    if d["rule"] == "interval":
        rule += f", {round(100 * d['confidence'])}% intervals, up to {d['max_seeds']} seeds"
    cost = ""
    if "trials" in doc:
        cost = f" {doc['trials']} trials, {doc['trial_seconds']:.0f} s of trial time"
        cost += f" ({doc['gpu_seconds']:.0f} GPU-seconds)." if doc.get("gpu_seconds") else "."
    return f"Decision {rule}; seeds {doc['seeds']}.{cost}"


def sections(doc: dict[str, Any], plot_png: bytes | None = None) -> list[Section]:
    """The report as sections (the audit report's renderers make the HTML and the markdown)."""
    head = Section("summary", f"Selection report: {doc['name']}")
    head.text(_summary(doc))
    out = [head]
    for cat in doc["categories"]:
        sec = Section(f"category-{cat['name']}", f"{cat['name']} (baseline score {_fmt(cat['baseline_score'])})")
        metric_names = sorted({k for c in cat["candidates"] for k in c["metric_deltas"]})
        rows = []
        for c in cat["candidates"]:
            decision = c["decision"] + _REASONS.get(c["reason"], "")
            deltas = [_fmt(c["metric_deltas"].get(m)) for m in metric_names]
            seeds = ", ".join(str(s) for s in c.get("seeds", [])) or "—"
            overlap = _overlap(c.get("contamination"))
            rows.append(
                [c["name"], _fmt(c["score"]), _fmt(c["delta"]), _interval(c), seeds, *deltas, overlap, decision]
            )
        headers = [
            "candidate",
            "score",
            "Δ score",
            "interval of Δ",
            "seeds",
            *[f"Δ {m}" for m in metric_names],
            "benchmark overlap",
            "decision",
        ]
        sec.table("candidates", headers, rows, numeric=[1, 2, *range(5, len(headers) - 2)])
        for c in [{"name": "baseline", "contamination": cat.get("baseline_contamination")}, *cat["candidates"]]:
            found = c.get("contamination") or {}
            if found.get("samples"):
                shown = ", ".join(f"{e['key']} ({e['reason']})" for e in found["examples"][:5])
                sec.text(
                    f"{c['name']}: {found['samples']} of {found['of']} training samples overlap the evaluation "
                    f"benchmarks ({', '.join(f'{b}: {n}' for b, n in found['by_benchmark'].items())}), e.g. {shown}."
                )
        sec.text(f"Merged baseline score: {_fmt(cat['merged_score'])}")
        out.append(sec)
    progression = Section("progression", "Baseline progression")
    steps = [[p["step"], _fmt(p["score"])] for p in doc["progression"]]
    progression.table("score after each category", ["step", "score"], steps, numeric=(1,))
    if plot_png is not None:
        progression.image("baseline progression", "data:image/png;base64," + base64.b64encode(plot_png).decode("ascii"))
    if "all_candidates" in doc:
        a = doc["all_candidates"]
        progression.text(f"All candidates together: {_fmt(a['score'])} (selected: {_fmt(a['selected_score'])})")
    progression.text("Selected components: " + ", ".join(c["name"] for c in doc["selected_components"]))
    out.append(progression)
    return out


def markdown(doc: dict[str, Any]) -> str:
    parts = sections(doc)
    return render_markdown(parts[0].title, parts)


def html_report(doc: dict[str, Any], plot_png: bytes) -> str:
    """A self-contained page: the tables and the plot embedded."""
    parts = sections(doc, plot_png)
    return render_html(parts[0].title, parts)


def selected_recipe(doc: dict[str, Any], datasets: dict[str, Any], seed: int) -> dict[str, Any]:
    """The selected mixture as a ``kind: mixture`` recipe (build it with ``curate build``)."""
    used = sorted({c["dataset"] for c in doc["selected_components"]})
    return {
        "kind": "mixture",
        "name": f"{doc['name']}_selected",
        "description": f"The mixture Individual Select chose in sweep {doc['name']}.",
        "seed": seed,
        "datasets": {alias: datasets[alias] for alias in used},
        "components": [{k: v for k, v in c.items() if v is not None} for c in doc["selected_components"]],
    }


def write_reports(out: Path, doc: dict[str, Any], datasets: dict[str, Any], seed: int) -> dict[str, Path]:
    plot = progression_plot(doc)
    atomic_write_bytes(out / "progression.png", plot)
    atomic_write_json(out / "report.json", doc)
    atomic_write_bytes(out / "report.md", markdown(doc).encode())
    atomic_write_bytes(out / "report.html", html_report(doc, plot).encode())
    recipe = selected_recipe(doc, datasets, seed)
    atomic_write_bytes(out / "selected_mixture.yaml", yaml.safe_dump(recipe, sort_keys=False).encode())
    return {
        "report.json": out / "report.json",
        "report.md": out / "report.md",
        "report.html": out / "report.html",
        "progression.png": out / "progression.png",
        "selected_mixture.yaml": out / "selected_mixture.yaml",
    }
