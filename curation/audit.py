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
    return {
        "dataset": manifest.name,
        "kind": manifest.kind,
        "samples": sum(s["samples"] for s in sources.values()),
        "shards": len(manifest.shards),
        "input": sum(s["input"] for s in sources.values()),
        "sources": sources,
        "dropped": dict(sorted(dropped.items())),
        "dropped_by_step": by_step,
        "totals": manifest.totals,
        "recipe_sha256": manifest.recipe_sha256,
    }


def _source_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, s in report["sources"].items():
        rows.append(
            [
                name,
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


HEADERS = ["source", "input", "samples", "dropped", "images", "QA pairs", "text tokens", "answer tokens", "% mix"]


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
    if report["dropped_by_step"]:
        lines += ["", "| step | reason | samples |", "|---|---|---:|"]
        for step, reasons in report["dropped_by_step"].items():
            lines += [f"| {step} | {reason} | {n:,} |" for reason, n in reasons.items()]
    return "\n".join(lines) + "\n"


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"
