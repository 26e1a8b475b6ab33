"""Report statistics: distributions from the sidecars (DuckDB only), funnels and download rates from the accounting."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from shards.manifest import DatasetManifest

PIXELS: list[float] = [32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096]
ASPECT = [0.25, 0.33, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, 3.0, 4.0]
TOKENS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
COUNTS: list[float] = [1, 2, 3, 4, 5, 6, 8, 11, 16, 32, 64, 128]


class Dist(NamedTuple):
    """One distribution: name, title, SQL expression over its table, fixed bin edges."""

    name: str
    title: str
    expr: str
    edges: list[float]


IMAGE_DISTS = [
    Dist("image_width", "image width (px)", "w", PIXELS),
    Dist("image_height", "image height (px)", "h", PIXELS),
    Dist("image_longest_side", "image longest side (px)", "greatest(w, h)", PIXELS),
    Dist("aspect_ratio", "aspect ratio (width / height)", "w::DOUBLE / nullif(h, 0)", ASPECT),
]
SAMPLE_DISTS = [
    Dist("answer_tokens", "answer tokens per sample", "answer_tokens", TOKENS),
    Dist("text_tokens", "text tokens per sample", "text_tokens", TOKENS),
    Dist("turns", "turns (QA pairs) per sample", "turns", COUNTS),
    Dist("images_per_sample", "images per sample", "n_images", COUNTS),
    Dist("pages", "pages per document (pdf)", "pages", COUNTS),
]
QUANTILES = (0.5, 0.9, 0.99)

IMAGES_SQL = "SELECT source, unnest(widths) AS w, unnest(heights) AS h FROM read_parquet(?)"
SAMPLES_SQL = "SELECT source, answer_tokens, text_tokens, turns, n_images, pages FROM read_parquet(?)"


class FunnelStep(NamedTuple):
    step: str
    input: int
    output: int
    dropped: dict[str, int]
    added: dict[str, int] = {}  # noqa: RUF012 - mixtures' repeats (input + added = output + dropped)


def bin_labels(edges: list[float]) -> list[str]:
    """Labels of the len(edges) + 1 bins: below the first edge, [a, b) between edges, above the last."""
    fmt = [f"{e:g}" for e in edges]
    return [f"<{fmt[0]}"] + [f"{a}–{b}" for a, b in itertools.pairwise(fmt)] + [f"≥{fmt[-1]}"]


def _aggregates(d: Dist, i: int) -> str:
    bins = " ".join(f"WHEN ({d.expr}) < {e!r} THEN {j}" for j, e in enumerate(d.edges))
    bucket = f"CASE WHEN ({d.expr}) IS NULL THEN NULL {bins} ELSE {len(d.edges)} END"
    qs = ", ".join(repr(q) for q in QUANTILES)
    return (
        f"histogram({bucket}) AS h{i}, quantile_disc({d.expr}, [{qs}]) AS q{i}, "
        f"max({d.expr}) AS m{i}, count({d.expr}) AS n{i}"
    )


def _query(con: duckdb.DuckDBPyConnection, rows_sql: str, dists: list[Dist], files: list[str]) -> dict[str, Any]:
    """One pass over the sidecars for a family of distributions, per source and overall (GROUPING SETS)."""
    aggs = ", ".join(_aggregates(d, i) for i, d in enumerate(dists))
    sql = f"SELECT source, {aggs} FROM ({rows_sql}) GROUP BY GROUPING SETS ((source), ()) ORDER BY source NULLS FIRST"
    out: dict[str, Any] = {d.name: {"title": d.title, "labels": bin_labels(d.edges), "sources": {}} for d in dists}
    for row in con.execute(sql, [files]).fetchall():
        source = row[0]
        for i, d in enumerate(dists):
            hist, quant, top, n = row[1 + 4 * i : 5 + 4 * i]
            counts = [0] * (len(d.edges) + 1)
            for b, c in (hist or {}).items():
                counts[int(b)] = int(c)
            cell = {"n": int(n), "counts": counts, "max": _num(top)}
            cell.update({f"p{round(q * 100)}": _num(v) for q, v in zip(QUANTILES, quant or [None] * 3, strict=True)})
            if source is None:
                out[d.name]["overall"] = cell
            elif n:
                out[d.name]["sources"][source] = cell
    return out


def _num(v: Any) -> float | int | None:
    if v is None:
        return None
    return round(float(v), 3) if isinstance(v, float) else int(v)


def distributions(sidecars: list[Path], threads: int | None = None) -> dict[str, Any]:
    """{name: {title, labels, overall: {n, counts, p50, p90, p99, max}, sources: {source: same}}}.

    Two passes over the sidecars (images unnested, samples); distributions without values are left out."""
    if not sidecars:
        return {}
    files = [str(p) for p in sidecars]
    con = duckdb.connect()
    try:
        con.execute(f"SET threads TO {int(threads or os.cpu_count() or 1)}")
        found = _query(con, IMAGES_SQL, IMAGE_DISTS, files) | _query(con, SAMPLES_SQL, SAMPLE_DISTS, files)
    finally:
        con.close()
    return {name: d for name, d in found.items() if d.get("overall", {}).get("n")}


def funnels(manifest: DatasetManifest) -> dict[str, list[FunnelStep]]:
    """{source: [(step, input, output, dropped_by_reason)]} in step order, from the accounting."""
    out: dict[str, list[FunnelStep]] = {}
    for step in (manifest.accounting or {}).get("steps", []):
        for source, c in step["sources"].items():
            dropped = {r: int(n) for r, n in sorted(c.get("dropped", {}).items())}
            added = {r: int(n) for r, n in sorted(c.get("added", {}).items())}
            out.setdefault(source, []).append(
                FunnelStep(step["step"], int(c["input"]), int(c["output"]), dropped, added)
            )
    return dict(sorted(out.items()))


DOWNLOAD_FAILED = "download_failed:"
AFTER_DOWNLOAD = ("resize_failed", "download_missing")  # rows img2dataset fetched, dropped afterwards


def download_success(manifest: DatasetManifest) -> dict[str, dict[str, Any]]:
    """Per source with `download_failed:*` drops: attempted, failed (by kind) and the success rate in percent.

    Attempted downloads are the step's output plus its download failures and post-download drops, so the
    metadata selection's drops (duplicate_url, not_selected, ...) do not count as downloads."""
    out: dict[str, dict[str, Any]] = {}
    for source, steps in funnels(manifest).items():
        for s in steps:
            failed = {r.removeprefix(DOWNLOAD_FAILED): n for r, n in s.dropped.items() if r.startswith(DOWNLOAD_FAILED)}
            if not failed:
                continue
            after = sum(n for r, n in s.dropped.items() if r in AFTER_DOWNLOAD)
            entry = out.setdefault(source, {"attempted": 0, "failed": 0, "by_kind": {}})
            entry["attempted"] += s.output + after + sum(failed.values())
            entry["failed"] += sum(failed.values())
            for kind, n in failed.items():
                entry["by_kind"][kind] = entry["by_kind"].get(kind, 0) + n
    for entry in out.values():
        ok = entry["attempted"] - entry["failed"]
        entry["success_pct"] = round(100.0 * ok / entry["attempted"], 2) if entry["attempted"] else 0.0
    return out
