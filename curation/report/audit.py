"""Mixture statistics from the sidecars (DuckDB, never the tars) and the manifest's accounting."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console

from curation.errors import CurationError
from curation.report.scores import WhatIf, score_report, score_tables
from curation.report.table import Table, markdown_table, rich_table
from curation.report.turn_ratings import turn_what_if, turn_what_if_tables
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


def source_stats(
    sidecars: list[Path], threads: int | None = None, con: duckdb.DuckDBPyConnection | None = None
) -> list[dict[str, Any]]:
    """Per source: samples, images, QA pairs, text and answer tokens, bytes (``con``: a connection to use)."""
    if not sidecars:
        return []
    own = con is None
    con = con or connect(threads)
    try:
        with reading_sidecars():
            cur = con.execute(PER_SOURCE_SQL, [[str(p) for p in sidecars]])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        if own:
            con.close()


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads TO {int(threads)}")
    return con


@contextmanager
def reading_sidecars() -> Iterator[None]:
    """A sidecar DuckDB cannot read is a one-line error that suggests `curate verify`."""
    try:
        yield
    except duckdb.IOException as exc:
        raise CurationError(
            f"cannot read the sidecars ({' '.join(str(exc).split())[:300]}); run `curate verify`"
        ) from None


def audit(directory: Path, scores: bool = False, what_if: dict[str, WhatIf] | None = None) -> dict[str, Any]:
    """The build's statistics from its manifest and sidecars. ``scores`` (or ``what_if``): also the score
    distributions and what-if tables (:mod:`curation.report.scores`); otherwise their keys hold empty dicts."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = [str(directory / s.sidecar) for s in manifest.shards]
    with connect() as con:
        rows = source_stats([Path(f) for f in files], con=con)
        scored: dict[str, Any] = {"scores": {}, "what_if": {}, "turn_what_if": {}}
        if scores or what_if is not None:
            with reading_sidecars():
                scored = score_report(con, files, {r["source"]: int(r["samples"]) for r in rows}, what_if)
                totals = {
                    r["source"]: {
                        k: int(r[c])
                        for k, c in (("turns", "qa_pairs"), ("samples", "samples"), ("answer_tokens", "answer_tokens"))
                    }
                    for r in rows
                }
                scored["turn_what_if"] = turn_what_if(con, files, totals)
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
        **scored,
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


def mixture_table(report: dict[str, Any]) -> Table:
    rows = [
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
    return Table("mixture: target versus achieved", MIXTURE_HEADERS, rows, numeric=(3, 4, 5, 6))


def duplicates_table(report: dict[str, Any]) -> Table:
    rows = [
        [step, source, other, f"{n:,}"]
        for step, per in report["duplicates"].items()
        for source, others in per.items()
        for other, n in others.items()
    ]
    return Table("duplicates per source pair", ["step", "dropped from", "duplicate of", "samples"], rows, numeric=(3,))


def contamination_table(report: dict[str, Any]) -> Table:
    rows = [
        [bench, source, what, f"{n:,}"]
        for bench, per in report["contamination"].items()
        for source, kinds in per.items()
        for what, n in sorted(kinds.items())
    ]
    headers = ["benchmark", "source", "matched on", "samples"]
    return Table("benchmark contamination removed", headers, rows, numeric=(3,))


def generation_table(report: dict[str, Any]) -> Table:
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
    return Table("generated QA pairs", ["step", "pairs", "count", "% of parsed"], rows, numeric=(2, 3))


def drops_table(report: dict[str, Any]) -> Table:
    rows = [
        [step, reason, f"{n:,}"] for step, reasons in report["dropped_by_step"].items() for reason, n in reasons.items()
    ]
    return Table("drops by step and reason", ["step", "reason", "samples"], rows, numeric=(2,))


SECTIONS = (mixture_table, duplicates_table, contamination_table, generation_table)
"""The audit's tables after the per-source one (the audit report and the dataset card show them too)."""

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


def sources_table(report: dict[str, Any], title: str | None = None) -> Table:
    rows = [
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
        for name, s in report["sources"].items()
    ]
    return Table(title, HEADERS, rows, numeric=range(2, len(HEADERS)))


def render_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    title = f"{report['dataset']} ({report['kind']}): {report['samples']:,} samples in {report['shards']} shards"
    console.print(rich_table(sources_table(report, title), no_wrap=True))
    for table in (
        *(of(report) for of in SECTIONS),
        drops_table(report),
        *score_tables(report),
        *turn_what_if_tables(report),
    ):
        if table.rows:
            console.print(rich_table(table))
    if not report["dropped_by_step"]:
        console.print("no samples dropped")


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## {report['dataset']} ({report['kind']})",
        "",
        f"{report['samples']:,} samples in {report['shards']} shards, from {report['input']:,} inputs.",
        "",
        *markdown_table(sources_table(report)),
    ]
    for table in (
        *(of(report) for of in SECTIONS),
        drops_table(report),
        *score_tables(report),
        *turn_what_if_tables(report),
    ):
        if table.rows:
            lines += ["", *markdown_table(table)]
    return "\n".join(lines) + "\n"


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"
