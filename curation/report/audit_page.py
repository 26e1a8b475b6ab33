"""The audit report: one self-contained HTML page (inline CSS, images as data URIs, no scripts) and markdown,
built as sections of typed blocks (:mod:`curation.report.blocks`)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from curation.recipe import Category
from curation.report import audit as audit_mod
from curation.report import plots
from curation.report.blocks import Cards, Section, render_html, render_markdown
from curation.report.previews import previews
from curation.report.scores import WhatIf, score_histograms, scores_table, what_if_tables
from curation.report.stats import distributions, download_success, funnels
from curation.report.table import Table
from curation.report.turn_ratings import turn_what_if_tables
from shards import read_manifest
from shards.atomic import atomic_write_bytes

__all__ = ["Section", "build_sections", "render_html", "render_markdown", "write_audit_report"]

UNCATEGORISED = "uncategorised"
QUANTILE_HEADERS = ["source", "n", "p50", "p90", "p99", "max"]


def write_audit_report(
    directory: Path,
    html_path: Path | None = None,
    md_path: Path | None = None,
    per_source: int = 3,
    what_if: dict[str, WhatIf] | None = None,
) -> dict[str, Path]:
    """Write <directory>/audit.html and audit.md (or the given paths); returns {"html": path, "md": path}.
    ``what_if``: thresholds of the scores' what-if tables (default: each score's build-wide quantiles)."""
    directory = Path(directory)
    html_path = Path(html_path) if html_path else directory / "audit.html"
    md_path = Path(md_path) if md_path else directory / "audit.md"
    sections = build_sections(directory, per_source, what_if)
    title = sections[0].title
    atomic_write_bytes(html_path, render_html(title, sections).encode("utf-8"))
    atomic_write_bytes(md_path, render_markdown(title, sections).encode("utf-8"))
    return {"html": html_path, "md": md_path}


def build_sections(directory: Path, per_source: int = 3, what_if: dict[str, WhatIf] | None = None) -> list[Section]:
    manifest = read_manifest(directory)
    report = audit_mod.audit(directory, scores=True, what_if=what_if)
    sidecars = [directory / s.sidecar for s in manifest.shards]
    dists = distributions(sidecars, threads=os.cpu_count())
    head = Section("summary", f"Audit: {report['dataset']} ({report['kind']})")
    head.text(
        f"{report['samples']:,} samples in {report['shards']} shards from {report['input']:,} inputs; "
        f"{sum(report['dropped'].values()):,} dropped; recipe sha256 {report['recipe_sha256']}."
    )
    totals = [[k, f"{v:,}"] for k, v in sorted(report["totals"].items())]
    head.add(Table("totals", ["total", "value"], totals, numeric=(1,)))
    return [
        head,
        _table3(report),
        _distributions(dists),
        *([_scores(report, sidecars)] if report["scores"] or report.get("turn_what_if") else []),
        _quality(report, manifest),
        _generation(report),
        _previews(previews(directory, manifest, per_source)),
    ]


def _table3(report: dict[str, Any]) -> Section:
    sec = Section("table3", "Sources by category (Table 3)")
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, s in report["sources"].items():
        groups.setdefault(s.get("category") or UNCATEGORISED, []).append((name, s))
    rows: list[list[str]] = []
    subtotals: list[int] = []
    cat_shares: dict[str, dict[str, Any]] = {}
    for category, members in sorted(groups.items(), key=lambda kv: _category_rank(kv[0])):
        for name, s in members:
            rows.append([name, category, *_counts(s), f"{s['mix_pct']:.2f}"])
        if len(groups) > 1 or len(members) > 1:
            total = {k: sum(s[k] for _, s in members) for k in ("samples", "images", "qa_pairs", "answer_tokens")}
            share = sum(s["mix_pct"] for _, s in members)
            subtotals.append(len(rows))
            rows.append([f"{category} (total)", category, *_counts(total), f"{share:.2f}"])
            cat_shares[category] = {"achieved": round(share, 2), "category": None}
    headers = ["source", "category", "samples", "images", "QA pairs", "answer tokens", "% mix"]
    title = "per source, grouped by category (% mix: share of answer tokens)"
    sec.add(Table(title, headers, rows, numeric=range(2, len(headers)), subtotals=subtotals))
    mixture = report["mixture"]
    if mixture:
        components = audit_mod.mixture_table(report)
        sec.add(replace(components, title=f"{components.title} (grouped by category)"))
        per_cat: dict[str, dict[str, Any]] = {}
        for c in mixture.values():
            cat = per_cat.setdefault(c["category"] or UNCATEGORISED, {"achieved": 0.0, "target": 0.0})
            cat["achieved"] += c["achieved_share"]
            known = c["target_share"] is not None and cat["target"] is not None
            cat["target"] = cat["target"] + c["target_share"] if known else None
        cat_rows = [[k, _fmt_share(v["target"]), _fmt_share(v["achieved"])] for k, v in per_cat.items()]
        sec.add(Table("mixture per category", ["category", "target %", "achieved %"], cat_rows, numeric=(1, 2)))
        sec.image("component shares", plots.share_bars(mixture, "achieved_share", "target_share", "components"))
        sec.image("category shares", plots.share_bars(per_cat, "achieved", "target", "categories"))
    elif cat_shares:
        sec.image("category shares", plots.share_bars(cat_shares, "achieved", None, "categories"))
    return sec


def _category_rank(category: str) -> tuple[int, str]:
    """Table 3's category order, then unknown ones by name, uncategorised last."""
    order = list(get_args(Category))
    return (order.index(category) if category in order else len(order) + (category == UNCATEGORISED), category)


def _fmt_share(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _counts(s: dict[str, Any]) -> list[str]:
    return [f"{s[k]:,}" for k in ("samples", "images", "qa_pairs", "answer_tokens")]


def _distributions(dists: dict[str, Any]) -> Section:
    sec = Section("distributions", "Distributions")
    if not dists:
        sec.text("no samples")
    for name, d in dists.items():
        sec.image(d["title"], plots.histogram(d))
        cells = [("all", d["overall"]), *d["sources"].items()]
        rows = [[src, f"{c['n']:,}", *(_fmt(c[q]) for q in ("p50", "p90", "p99", "max"))] for src, c in cells]
        sec.add(Table(f"{d['title']}: quantiles", QUANTILE_HEADERS, rows, numeric=range(1, len(QUANTILE_HEADERS))))
        used = [i for i, n in enumerate(d["overall"]["counts"]) if n] or [0]
        span = range(used[0], used[-1] + 1)  # the table leaves out the empty bins at both ends; the plot shows all
        bins = [[d["labels"][i], *(f"{c['counts'][i]:,}" for _, c in cells)] for i in span]
        headers = ["bin", *(src for src, _ in cells)]
        sec.add(Table(f"{d['title']}: histogram ({name})", headers, bins, numeric=range(1, len(headers))))
    return sec


def _scores(report: dict[str, Any], sidecars: list[Path]) -> Section:
    """Each score's distribution per source (table and histogram) and its what-if tables."""
    sec = Section("scores", "Scores")
    if report["scores"]:
        sec.add(scores_table(report))
    with audit_mod.connect(os.cpu_count()) as con, audit_mod.reading_sidecars():
        hists = score_histograms(con, [str(p) for p in sidecars], report["scores"])
    for hist in hists.values():
        sec.image(hist["title"], plots.histogram(hist))
    for table in [*what_if_tables(report), *turn_what_if_tables(report)]:
        sec.add(table)
    return sec


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.3g}"


def _quality(report: dict[str, Any], manifest: Any) -> Section:
    sec = Section("quality", "Quality")
    for source, steps in funnels(manifest).items():
        rows = [
            [s.step, f"{s.input:,}", f"{s.output:,}", f"{sum(s.dropped.values()):,}", _reasons(s.dropped)]
            + ([_reasons(s.added)] if any(x.added for x in steps) else [])
            for s in steps
        ]
        headers = ["step", "input", "output", "dropped", "reasons"] + (["added"] if any(x.added for x in steps) else [])
        sec.add(Table(f"funnel: {source}", headers, rows, numeric=(1, 2, 3)))
        sec.image(f"funnel {source}", plots.funnel(source, steps))
    drops = audit_mod.drops_table(report)
    sec.add(drops)
    if not drops.rows:
        sec.text("no samples dropped")
    sec.add(audit_mod.duplicates_table(report))
    sec.add(audit_mod.contamination_table(report))
    if not report["duplicates"]:
        sec.text("no deduplication step")
    if not report["contamination"]:
        sec.text("no contamination removed (or no decontamination step)")
    rates = download_success(manifest)
    rate_rows = [
        [s, f"{r['attempted']:,}", f"{r['failed']:,}", f"{r['success_pct']:.2f}", _reasons(r["by_kind"])]
        for s, r in rates.items()
    ]
    headers = ["source", "attempted", "failed", "success %", "failures by kind"]
    sec.add(Table("download success", headers, rate_rows, numeric=(1, 2, 3)))
    if not rates:
        sec.text("no downloads in this build")
    return sec


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{r}: {n:,}" for r, n in sorted(counts.items()))


def _generation(report: dict[str, Any]) -> Section:
    sec = Section("generation", "Generation")
    sec.add(audit_mod.generation_table(report))
    if not report["generation"]:
        sec.text("no generation step")
    return sec


def _previews(found: dict[str, dict[str, Any]]) -> Section:
    sec = Section("previews", "Previews")
    for source, p in found.items():
        sec.add(Cards(f"{source}: kept", p["kept"]))
        sec.add(Cards(f"{source}: rejected", p["rejected"]))
        if p["note"]:
            sec.text(f"{source}: {p['note']}")
    return sec
