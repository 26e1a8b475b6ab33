"""Selection reports: ``report.json`` (per category, each candidate's name, score, baseline score and decision),
``report.md`` and a self-contained ``report.html``, the baseline's progression across categories as a plot
(like the paper's Figure 4), and the selected mixture written out as a recipe."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import yaml

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


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Selection report: {doc['name']}", "", f"Tolerance {doc['tolerance']}, seeds {doc['seeds']}.", ""]
    for cat in doc["categories"]:
        lines += [f"## {cat['name']} (baseline score {_fmt(cat['baseline_score'])})", ""]
        metric_names = sorted({k for c in cat["candidates"] for k in c["metric_deltas"]})
        head = ["candidate", "score", "Δ score", *[f"Δ {m}" for m in metric_names], "decision"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for c in cat["candidates"]:
            deltas = [_fmt(c["metric_deltas"].get(m)) for m in metric_names]
            decision = c["decision"] + (" (trial failed)" if c["reason"] == "failed" else "")
            lines.append("| " + " | ".join([c["name"], _fmt(c["score"]), _fmt(c["delta"]), *deltas, decision]) + " |")
        lines += ["", f"Merged baseline score: {_fmt(cat['merged_score'])}", ""]
    lines += ["## Baseline progression", "", "| step | score |", "|---|---:|"]
    lines += [f"| {p['step']} | {_fmt(p['score'])} |" for p in doc["progression"]]
    if "all_candidates" in doc:
        a = doc["all_candidates"]
        lines += ["", f"All candidates together: {_fmt(a['score'])} (selected: {_fmt(a['selected_score'])})"]
    lines += ["", "Selected components: " + ", ".join(c["name"] for c in doc["selected_components"]), ""]
    return "\n".join(lines)


def html_report(doc: dict[str, Any], plot_png: bytes) -> str:
    """A self-contained page: the markdown tables as HTML and the plot embedded."""
    body = []
    for line in markdown(doc).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("|---") or line.startswith("|--"):
            continue
        elif line.startswith("| "):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    rows = "\n".join(body).replace("</p>\n<tr>", "</p>\n<table><tr>").replace("</tr>\n<p>", "</tr></table>\n<p>")
    rows = rows.replace("</tr>\n<h2>", "</tr></table>\n<h2>")
    image = base64.b64encode(plot_png).decode("ascii")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(doc["name"])
        + "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:3px 8px}</style></head><body>"
        + rows
        + f"<h2>Progression</h2><img alt='baseline progression' src='data:image/png;base64,{image}'>"
        + "</body></html>\n"
    )


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
