"""The audit report: one self-contained HTML page (inline CSS, images as data URIs, no scripts) and markdown."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from curation import audit as audit_mod
from curation.recipe import Category
from curation.report import plots
from curation.report.previews import previews
from curation.report.stats import distributions, download_success, funnels
from shards import read_manifest
from shards.atomic import atomic_write_bytes

UNCATEGORISED = "uncategorised"
QUANTILE_HEADERS = ["source", "n", "p50", "p90", "p99", "max"]
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.sub td{font-weight:600;background:#fafafa}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;width:250px;font-size:12px}
.card img{max-width:120px;max-height:120px;margin:2px}.reason{color:#b00;font-weight:600}.muted{color:#777}
"""


@dataclass
class Section:
    """A report section: blocks of ("text", str), ("table", title, headers, rows), ("image", alt, uri),
    ("cards", label, items)."""

    id: str
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def text(self, s: str) -> None:
        self.blocks.append(("text", s))

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        if rows:
            self.blocks.append(("table", title, headers, rows))

    def image(self, alt: str, uri: str) -> None:
        if uri:
            self.blocks.append(("image", alt, uri))


def write_audit_report(
    directory: Path, html_path: Path | None = None, md_path: Path | None = None, per_source: int = 3
) -> dict[str, Path]:
    """Write <directory>/audit.html and audit.md (or the given paths); returns {"html": path, "md": path}."""
    directory = Path(directory)
    html_path = Path(html_path) if html_path else directory / "audit.html"
    md_path = Path(md_path) if md_path else directory / "audit.md"
    sections = build_sections(directory, per_source)
    title = sections[0].title
    atomic_write_bytes(html_path, render_html(title, sections).encode("utf-8"))
    atomic_write_bytes(md_path, render_markdown(title, sections).encode("utf-8"))
    return {"html": html_path, "md": md_path}


def build_sections(directory: Path, per_source: int = 3) -> list[Section]:
    manifest = read_manifest(directory)
    report = audit_mod.audit(directory)
    dists = distributions([directory / s.sidecar for s in manifest.shards], threads=os.cpu_count())
    head = Section("summary", f"Audit: {report['dataset']} ({report['kind']})")
    head.text(
        f"{report['samples']:,} samples in {report['shards']} shards from {report['input']:,} inputs; "
        f"{sum(report['dropped'].values()):,} dropped; recipe sha256 {report['recipe_sha256']}."
    )
    head.table("totals", ["total", "value"], [[k, f"{v:,}"] for k, v in sorted(report["totals"].items())])
    return [
        head,
        _table3(report),
        _distributions(dists),
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
    cat_shares: dict[str, dict[str, Any]] = {}
    for category, members in sorted(groups.items(), key=lambda kv: _category_rank(kv[0])):
        for name, s in members:
            rows.append([name, category, *_counts(s), f"{s['mix_pct']:.2f}"])
        if len(groups) > 1 or len(members) > 1:
            total = {k: sum(s[k] for _, s in members) for k in ("samples", "images", "qa_pairs", "answer_tokens")}
            share = sum(s["mix_pct"] for _, s in members)
            rows.append([f"{category} (total)", category, *_counts(total), f"{share:.2f}"])
            cat_shares[category] = {"achieved": round(share, 2), "category": None}
    headers = ["source", "category", "samples", "images", "QA pairs", "answer tokens", "% mix"]
    sec.table("per source, grouped by category (% mix: share of answer tokens)", headers, rows)
    mixture = report["mixture"]
    if mixture:
        title, mix_headers, rows_of = audit_mod.SECTIONS[0]
        sec.table(title + " (grouped by category)", mix_headers, rows_of(report))
        per_cat: dict[str, dict[str, Any]] = {}
        for c in mixture.values():
            cat = per_cat.setdefault(c["category"] or UNCATEGORISED, {"achieved": 0.0, "target": 0.0})
            cat["achieved"] += c["achieved_share"]
            known = c["target_share"] is not None and cat["target"] is not None
            cat["target"] = cat["target"] + c["target_share"] if known else None
        sec.table(
            "mixture per category",
            ["category", "target %", "achieved %"],
            [[k, _fmt_share(v["target"]), _fmt_share(v["achieved"])] for k, v in per_cat.items()],
        )
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
        sec.table(f"{d['title']}: quantiles", QUANTILE_HEADERS, rows)
        used = [i for i, n in enumerate(d["overall"]["counts"]) if n] or [0]
        span = range(used[0], used[-1] + 1)  # the table leaves out the empty bins at both ends; the plot shows all
        bins = [[d["labels"][i], *(f"{c['counts'][i]:,}" for _, c in cells)] for i in span]
        sec.table(f"{d['title']}: histogram ({name})", ["bin", *(src for src, _ in cells)], bins)
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
        sec.table(f"funnel: {source}", headers, rows)
        sec.image(f"funnel {source}", plots.funnel(source, steps))
    drops = [[step, reason, f"{n:,}"] for step, rs in report["dropped_by_step"].items() for reason, n in rs.items()]
    sec.table("drops by step and reason", ["step", "reason", "samples"], drops)
    if not drops:
        sec.text("no samples dropped")
    for title, headers, rows_of in audit_mod.SECTIONS[1:3]:
        sec.table(title, headers, rows_of(report))
    if not report["duplicates"]:
        sec.text("no deduplication step")
    if not report["contamination"]:
        sec.text("no contamination removed (or no decontamination step)")
    rates = download_success(manifest)
    sec.table(
        "download success",
        ["source", "attempted", "failed", "success %", "failures by kind"],
        [
            [s, f"{r['attempted']:,}", f"{r['failed']:,}", f"{r['success_pct']:.2f}", _reasons(r["by_kind"])]
            for s, r in rates.items()
        ],
    )
    if not rates:
        sec.text("no downloads in this build")
    return sec


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{r}: {n:,}" for r, n in sorted(counts.items()))


def _generation(report: dict[str, Any]) -> Section:
    sec = Section("generation", "Generation")
    title, headers, rows_of = audit_mod.SECTIONS[3]
    sec.table(title, headers, rows_of(report))
    if not report["generation"]:
        sec.text("no generation step")
    return sec


def _previews(found: dict[str, dict[str, Any]]) -> Section:
    sec = Section("previews", "Previews")
    for source, p in found.items():
        sec.blocks.append(("cards", f"{source}: kept", p["kept"]))
        sec.blocks.append(("cards", f"{source}: rejected", p["rejected"]))
        if p["note"]:
            sec.text(f"{source}: {p['note']}")
    return sec


def render_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + " · ".join(f'<a href="#{s.id}">{esc(s.title)}</a>' for s in sections[1:]) + "</nav>",
    ]
    for sec in sections:
        out.append(f'<section id="{sec.id}"><h2>{esc(sec.title)}</h2>')
        for block in sec.blocks:
            out.append(_html_block(block))
        out.append("</section>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _html_block(block: tuple) -> str:
    esc = html.escape
    kind = block[0]
    if kind == "text":
        return f"<p>{esc(block[1])}</p>"
    if kind == "image":
        return f'<img alt="{esc(block[1])}" src="{block[2]}">'
    if kind == "table":
        _, title, headers, rows = block
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join(
            f"<tr{' class=sub' if r[0].endswith('(total)') else ''}>"
            + "".join(f"<td{' class=n' if i and _numeric(c) else ''}>{esc(c)}</td>" for i, c in enumerate(r))
            + "</tr>"
            for r in rows
        )
        return f"<h3>{esc(title)}</h3><table><tr>{head}</tr>{body}</table>"
    _, label, items = block
    if not items:
        return ""
    cards = []
    for it in items:
        imgs = "".join(f'<img alt="{esc(it["key"])}" src="{u}">' for u in it["images"] if u)
        reason = ""
        if it.get("reason"):
            reason = f'<div class="reason">{esc(it.get("step") or "")}: {esc(it["reason"])}</div>'
            reason += f'<div class="muted">{esc(it.get("detail") or "")}</div>'
        texts = "".join(f"<div>{esc(t)}</div>" for t in it["texts"])
        cards.append(f'<div class="card"><b>{esc(it["key"])}</b>{reason}<div>{imgs}</div>{texts}</div>')
    return f'<h3>{esc(label)}</h3><div class="cards">{"".join(cards)}</div>'


def _numeric(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for sec in sections:
        if sec is not sections[0]:
            lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            lines += _md_block(block)
    return "\n".join(lines).rstrip() + "\n"


def _md(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def _md_block(block: tuple) -> list[str]:
    kind = block[0]
    if kind == "text":
        return [block[1], ""]
    if kind == "image":
        return []
    if kind == "table":
        _, title, headers, rows = block
        out = [f"### {title}", "", "| " + " | ".join(map(_md, headers)) + " |", "|" + "---|" * len(headers)]
        return out + ["| " + " | ".join(map(_md, r)) + " |" for r in rows] + [""]
    _, label, items = block
    if not items:
        return []
    out = [f"### {label}", "", "| key | reason | text |", "|---|---|---|"]
    for it in items:
        reason = f"{it.get('step') or ''}: {it['reason']} ({it.get('detail') or ''})" if it.get("reason") else ""
        out.append(f"| {_md(it['key'])} | {_md(reason)} | {_md(' / '.join(it['texts'])[:300])} |")
    return [*out, ""]
