"""Per-turn ratings (judges, FineVision): what a turn-level ``score_filter`` at each threshold would keep, per
source -- turns, samples and answer tokens -- from the sidecars' per-turn columns (``turn_ratings``,
``turn_answer_tokens``: present in builds that keep per-turn ratings) with DuckDB.

The rule is ``score_filter``'s at ``level: turn`` with ``min: t``: a turn rated below ``t`` is removed, an
unrated turn stays, and a sample that loses every turn is dropped."""

from __future__ import annotations

from typing import Any

import duckdb

from curation.report.table import Table

THRESHOLDS = (2, 3, 4, 5)  # FineVision's 1-5 scale: what filtering at each rating would keep
HEADERS = ["threshold", "source", "turns kept", "% turns", "samples kept", "% samples", "answer tokens kept", "%"]

AXES_SQL = """
SELECT DISTINCT unnest(map_keys(turn_ratings)) FROM read_parquet($files) WHERE turn_ratings IS NOT NULL ORDER BY 1
"""


def _removed_sql(n: int) -> str:
    """Per source: turns and answer tokens removed, and samples emptied, at each of ``n`` thresholds."""
    per_sample = ", ".join(
        f"count(*) FILTER (WHERE r < $t{i}) AS turns{i}, coalesce(sum(a) FILTER (WHERE r < $t{i}), 0) AS tokens{i}, "
        f"bool_and(coalesce(r < $t{i}, false)) AS gone{i}"
        for i in range(n)
    )
    per_source = ", ".join(
        f"sum(turns{i})::BIGINT, sum(tokens{i})::BIGINT, count(*) FILTER (WHERE gone{i})" for i in range(n)
    )
    return f"""
        WITH t AS (
            SELECT source, key, unnest(map_extract(turn_ratings, $axis)[1]) AS r, unnest(turn_answer_tokens) AS a
            FROM read_parquet($files) WHERE turn_answer_tokens IS NOT NULL
        ), s AS (SELECT source, key, {per_sample} FROM t GROUP BY source, key)
        SELECT source, {per_source} FROM s GROUP BY source ORDER BY source
    """


def has_turn_ratings(con: duckdb.DuckDBPyConnection, files: list[str]) -> bool:
    if not files:
        return False
    names = con.execute("SELECT name FROM parquet_schema($f)", {"f": files[0]}).fetchall()
    return any(name == "turn_ratings" for (name,) in names)


def turn_what_if(con: duckdb.DuckDBPyConnection, files: list[str], totals: dict[str, dict[str, int]]) -> dict[str, Any]:
    """``{axis: {"thresholds", "sources": {source: {"turns", "samples", "answer_tokens", "kept": [...]}}}}``;
    ``totals``: every source's ``turns``, ``samples`` and ``answer_tokens`` (the sidecars' sums)."""
    if not has_turn_ratings(con, files):
        return {}
    axes = [a for (a,) in con.execute(AXES_SQL, {"files": files}).fetchall()]
    out: dict[str, Any] = {}
    sql = _removed_sql(len(THRESHOLDS))
    for axis in axes:
        params = {"files": files, "axis": axis, **{f"t{i}": float(t) for i, t in enumerate(THRESHOLDS)}}
        removed = {row[0]: row[1:] for row in con.execute(sql, params).fetchall()}
        sources: dict[str, Any] = {}
        for source, total in sorted(totals.items()):
            cut = removed.get(source, (0,) * (3 * len(THRESHOLDS)))
            kept = []
            for i, t in enumerate(THRESHOLDS):
                turns, tokens, gone = cut[3 * i : 3 * i + 3]
                kept.append(
                    {
                        "threshold": t,
                        "turns": total["turns"] - int(turns),
                        "samples": total["samples"] - int(gone),
                        "answer_tokens": total["answer_tokens"] - int(tokens),
                    }
                )
            sources[source] = {**total, "kept": kept}
        out[axis] = {"thresholds": list(THRESHOLDS), "sources": sources}
    return out


def turn_what_if_tables(report: dict[str, Any]) -> list[Table]:
    return [_table(axis, w) for axis, w in report.get("turn_what_if", {}).items()]


def _table(axis: str, w: dict[str, Any]) -> Table:
    rows = []
    for i, t in enumerate(w["thresholds"]):
        for source, s in w["sources"].items():
            k = s["kept"][i]
            rows.append(
                [
                    f">= {t:g}",
                    source,
                    *(cell for key in ("turns", "samples", "answer_tokens") for cell in _pair(k[key], s[key])),
                ]
            )
    title = (
        f"turn-level what-if {axis}: kept when turns rated below the threshold are removed (unrated turns stay; a "
        "sample without turns left is dropped)"
    )
    return Table(title, HEADERS, rows, numeric=(2, 3, 4, 5, 6, 7))


def _pair(kept: int, total: int) -> tuple[str, str]:
    return f"{kept:,}", f"{100 * kept / total:.1f}" if total else ""
