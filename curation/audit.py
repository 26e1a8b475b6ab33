"""Mixture statistics from the sidecars (DuckDB, never the tars) and the manifest's accounting."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from curation.errors import CurationError
from shards import read_manifest

PER_SOURCE_SQL = """
SELECT source,
       count(*)                    AS samples,
       coalesce(sum(n_images), 0)  AS images,
       coalesce(sum(turns), 0)     AS qa_pairs,
       coalesce(sum(text_tokens), 0)   AS text_tokens,
       coalesce(sum(answer_tokens), 0) AS answer_tokens,
       coalesce(sum(bytes), 0)     AS bytes
FROM read_parquet(?)
GROUP BY source
ORDER BY source
"""


def source_stats(sidecars: list[Path], threads: int | None = None) -> list[dict[str, Any]]:
    if not sidecars:
        return []
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads TO {int(threads)}")
    try:
        cur = con.execute(PER_SOURCE_SQL, [[str(p) for p in sidecars]])
    except duckdb.IOException as exc:
        raise CurationError(
            f"cannot read the sidecars ({' '.join(str(exc).split())[:300]}); run `curate verify`"
        ) from None
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    con.close()
    return rows


def audit(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    manifest = read_manifest(directory)
    rows = source_stats([directory / s.sidecar for s in manifest.shards])
    total_answer = sum(r["answer_tokens"] for r in rows)
    accounting = manifest.accounting or {}
    per_source_acc = accounting.get("sources", {})
    sources: dict[str, Any] = {}
    for name in sorted(set(per_source_acc) | {r["source"] for r in rows}):
        r = next((x for x in rows if x["source"] == name), None) or {
            "samples": 0,
            "images": 0,
            "qa_pairs": 0,
            "text_tokens": 0,
            "answer_tokens": 0,
            "bytes": 0,
        }
        acc = per_source_acc.get(name, {})
        sources[name] = {
            "samples": int(r["samples"]),
            "images": int(r["images"]),
            "qa_pairs": int(r["qa_pairs"]),
            "text_tokens": int(r["text_tokens"]),
            "answer_tokens": int(r["answer_tokens"]),
            "mix_pct": round(100.0 * r["answer_tokens"] / total_answer, 2) if total_answer else 0.0,
            "bytes": int(r["bytes"]),
            "input": int(acc.get("input", r["samples"])),
            "dropped": acc.get("dropped", {}),
        }
    dropped: Counter[str] = Counter()
    for s in sources.values():
        dropped.update(s["dropped"])
    by_step: dict[str, dict[str, int]] = {}
    for step in accounting.get("steps", []):
        reasons: Counter[str] = Counter()
        for c in step["sources"].values():
            reasons.update(c["dropped"])
        if reasons:
            by_step[step["step"]] = dict(sorted(reasons.items()))
    for name, s in sources.items():
        s["category"] = manifest.categories.get(name)
    return {
        "dataset": manifest.name,
        "kind": manifest.kind,
        "mixture": _mixture_rows(manifest.mixture),
        "duplicates": manifest.duplicates,
        "contamination": _contamination(per_source_acc),
        "generation": {label: r for label, r in manifest.reports.items() if "pairs_parsed" in r},
        "samples": sum(s["samples"] for s in sources.values()),
        "shards": len(manifest.shards),
        "input": sum(s["input"] for s in sources.values()),
        "sources": sources,
        "dropped": dict(sorted(dropped.items())),
        "dropped_by_step": by_step,
        "totals": manifest.totals,
        "recipe_sha256": manifest.recipe_sha256,
    }


def _mixture_rows(mixture: dict[str, Any] | None) -> dict[str, Any]:
    """Per component: category, target (as declared), target and achieved share of answer tokens, epochs."""
    if not mixture:
        return {}
    from typing import get_args

    from curation.recipe import Category

    order = {c: i for i, c in enumerate(get_args(Category))}
    components = sorted(
        mixture["components"].items(), key=lambda kv: (order.get(kv[1].get("category"), len(order)), kv[0])
    )  # grouped by category, as in Table 3
    rows = {}
    for name, c in components:
        rows[name] = {
            "category": c.get("category"),
            "target": c["target"],
            "target_share": c.get("target_share"),
            "achieved_share": c["achieved_share"],
            "epochs": c["epochs"],
            "samples": c["samples"],
            "available_samples": c["available_samples"],
        }
    return rows


def _contamination(per_source: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """benchmark -> source -> {image, question, image_and_question: count} from the drop reasons."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for source, acc in per_source.items():
        for reason, n in acc.get("dropped", {}).items():
            if reason.startswith("contaminated_") and ":" in reason:
                what, bench = reason.removeprefix("contaminated_").split(":", 1)
                out.setdefault(bench, {}).setdefault(source, {})[what] = n
    return {b: dict(sorted(v.items())) for b, v in sorted(out.items())}


def _target_text(target: dict[str, Any]) -> str:
    if "answer_share" in target:
        return f"{target['answer_share']:g}% of answer tokens"
    if "samples" in target:
        return f"{target['samples']:,} samples"
    return f"{target['epochs']:g} epochs"


MIXTURE_HEADERS = ["component", "category", "target", "target %", "achieved %", "epochs", "samples"]


def _mixture_table_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            name,
            c["category"] or "",
            _target_text(c["target"]),
            "" if c["target_share"] is None else f"{c['target_share']:.2f}",
            f"{c['achieved_share']:.2f}",
            f"{c['epochs']:.2f}",
            f"{c['samples']:,}",
        ]
        for name, c in report["mixture"].items()
    ]


def _duplicate_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [step, source, other, f"{n:,}"]
        for step, per in report["duplicates"].items()
        for source, others in per.items()
        for other, n in others.items()
    ]


def _contamination_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [bench, source, what, f"{n:,}"]
        for bench, per in report["contamination"].items()
        for source, kinds in per.items()
        for what, n in sorted(kinds.items())
    ]


def _generation_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label, r in report.get("generation", {}).items():
        parsed = r.get("pairs_parsed", 0)
        rows.append([label, "parsed", f"{parsed:,}", ""])
        rows.append(
            [
                label,
                "kept",
                f"{r.get('pairs_kept', 0):,}",
                f"{100 * r.get('pairs_kept', 0) / parsed:.1f}%" if parsed else "",
            ]
        )
        for rule, n in r.get("discarded", {}).items():
            rows.append([label, f"discarded: {rule}", f"{n:,}", f"{100 * n / parsed:.1f}%" if parsed else ""])
        for reason, n in r.get("failures", {}).items():
            rows.append([label, f"failed documents: {reason}", f"{n:,}", ""])
    return rows


SECTIONS = [
    ("mixture: target versus achieved", MIXTURE_HEADERS, _mixture_table_rows),
    ("duplicates per source pair", ["step", "dropped from", "duplicate of", "samples"], _duplicate_rows),
    ("benchmark contamination removed", ["benchmark", "source", "matched on", "samples"], _contamination_rows),
    ("generated QA pairs", ["step", "pairs", "count", "% of parsed"], _generation_rows),
]


def _source_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in report["sources"].items():
        rows.append(
            [
                name,
                s.get("category") or "",
                f"{s['input']:,}",
                f"{s['samples']:,}",
                f"{sum(s['dropped'].values()):,}",
                f"{s['images']:,}",
                f"{s['qa_pairs']:,}",
                f"{s['text_tokens']:,}",
                f"{s['answer_tokens']:,}",
                f"{s['mix_pct']:.2f}",
            ]
        )
    return rows


HEADERS = [
    "source",
    "category",
    "input",
    "samples",
    "dropped",
    "images",
    "QA pairs",
    "text tokens",
    "answer tokens",
    "% mix",
]


def render_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(
        title=f"{report['dataset']} ({report['kind']}): {report['samples']:,} samples in {report['shards']} shards"
    )
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for row in _source_rows(report):
        t.add_row(*row)
    console.print(t)
    for title, headers, rows_of in SECTIONS:
        rows = rows_of(report)
        if rows:
            extra = Table(title=title)
            for i, h in enumerate(headers):
                extra.add_column(h, justify="right" if i == len(headers) - 1 or "%" in h else "left")
            for row in rows:
                extra.add_row(*row)
            console.print(extra)
    if report["dropped_by_step"]:
        d = Table(title="drops by step and reason")
        for h in ("step", "reason", "samples"):
            d.add_column(h, justify="right" if h == "samples" else "left")
        for step, reasons in report["dropped_by_step"].items():
            for reason, n in reasons.items():
                d.add_row(step, reason, f"{n:,}")
        console.print(d)
    else:
        console.print("no samples dropped")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## {report['dataset']} ({report['kind']})",
        "",
        f"{report['samples']:,} samples in {report['shards']} shards, from {report['input']:,} inputs.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _source_rows(report)]
    for title, headers, rows_of in SECTIONS:
        rows = rows_of(report)
        if rows:
            lines += [
                "",
                f"### {title}",
                "",
                "| " + " | ".join(headers) + " |",
                "|" + "|".join(["---"] * len(headers)) + "|",
            ]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
    if report["dropped_by_step"]:
        lines += ["", "| step | reason | samples |", "|---|---|---:|"]
        for step, reasons in report["dropped_by_step"].items():
            lines += [f"| {step} | {reason} | {n:,} |" for reason, n in reasons.items()]
    return "\n".join(lines) + "\n"


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"
