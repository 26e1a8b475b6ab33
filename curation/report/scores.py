"""Per-sample scores (the sidecars' ``scores`` map): distributions per source and what-if tables (what a
threshold would keep), from the sidecars with DuckDB.

A NaN score counts as missing. Samples without a score are kept by every what-if threshold."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import duckdb

from curation.errors import CurationError
from curation.report.table import Table

Direction = Literal[">=", "<"]
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
STAT_KEYS = ("count", "missing", "min", "p10", "p25", "p50", "p75", "p90", "max", "mean")
DEFAULT_QUANTILES = ("p10", "p25", "p50", "p75")  # the build-wide quantiles a what-if tries by default
HIST_BINS = 20
SPEC_FORM = "NAME=T[,T...] (keep samples scoring >= T) or NAME<T[,T...] (keep samples scoring < T)"
SPEC = re.compile(r"^\s*(?P<name>[^<>=]+?)\s*(?P<op>>=|=|<)(?P<values>.*)$")

# A map's keys are never null: a column chunk of `scores`' keys with fewer nulls than levels holds a score.
KEY_CHUNKS_SQL = """
SELECT count(*), count(*) FILTER (WHERE stats_null_count < num_values), count(*) FILTER (WHERE stats_null_count IS NULL)
FROM parquet_metadata($files) WHERE path_in_schema LIKE 'scores, %, key'
"""
HAS_SCORES_SQL = "SELECT 1 FROM read_parquet($files) WHERE cardinality(scores) > 0 LIMIT 1"
VALUE = "CASE WHEN isnan({x}) THEN NULL ELSE {x} END"  # NaN sorts above every number in DuckDB: missing
STATS_SQL = f"""
SELECT name, source, count(v) AS n, min(v), quantile_cont(v, {list(QUANTILES)}), max(v), avg(v)
FROM (
    SELECT source, e.key AS name, {VALUE.format(x="e.value")} AS v
    FROM (SELECT source, unnest(map_entries(scores)) AS e FROM read_parquet($files) WHERE cardinality(scores) > 0)
)
GROUP BY GROUPING SETS ((name, source), (name))
ORDER BY name, source NULLS FIRST
"""


@dataclass(frozen=True)
class WhatIf:
    """A what-if for one score: keep samples scoring ``>=`` (or ``<``) each threshold; no thresholds: the
    build-wide quantiles."""

    direction: Direction = ">="
    thresholds: tuple[float, ...] = ()


def parse_what_if(spec: str) -> tuple[str, WhatIf]:
    """``NAME=T,...`` (or ``NAME>=T,...``) keeps samples scoring >= T; ``NAME<T,...`` keeps those scoring < T.
    An empty threshold list means the build-wide quantiles."""
    m = SPEC.match(spec)
    if m is None:
        raise CurationError(f"--what-if {spec!r}: expected {SPEC_FORM}")
    values = [v.strip() for v in m["values"].split(",")] if m["values"].strip() else []
    try:
        thresholds = [float(v) for v in values]
    except ValueError:
        thresholds = [math.nan]
    if any(not math.isfinite(t) for t in thresholds):
        raise CurationError(f"--what-if {spec!r}: thresholds must be finite numbers; expected {SPEC_FORM}")
    direction: Direction = "<" if m["op"] == "<" else ">="
    return m["name"], WhatIf(direction, tuple(sorted(set(thresholds))))


def parse_what_ifs(specs: list[str]) -> dict[str, WhatIf]:
    """Several ``--what-if`` specs by score name; naming a score twice is an error."""
    out: dict[str, WhatIf] = {}
    for spec in specs:
        name, what_if = parse_what_if(spec)
        if name in out:
            raise CurationError(f"--what-if {spec!r}: {name!r} is named twice")
        out[name] = what_if
    return out


def has_scores(con: duckdb.DuckDBPyConnection, files: list[str]) -> bool:
    """Whether any sidecar row has a non-empty scores map: from the parquet footers' null counts, or (files
    without them) a scan of that column that stops at the first."""
    if not files:
        return False
    chunks, with_keys, unknown = con.execute(KEY_CHUNKS_SQL, {"files": files}).fetchone() or (0, 0, 0)
    if with_keys:
        return True
    if chunks and not unknown:
        return False
    return con.execute(HAS_SCORES_SQL, {"files": files}).fetchone() is not None


def score_report(
    con: duckdb.DuckDBPyConnection,
    files: list[str],
    samples: dict[str, int],
    what_if: dict[str, WhatIf] | None = None,
) -> dict[str, Any]:
    """``{"scores": {name: {source: stats}}, "what_if": {name: table}}`` (empty dicts for a build without
    scores). ``samples``: every source's sample count (for the missing counts)."""
    what_if = what_if or {}
    if not has_scores(con, files):
        _check_names(what_if, [])
        return {"scores": {}, "what_if": {}}
    per_source, overall = score_stats(con, files, samples)
    _check_names(what_if, list(per_source))
    tables = {}
    for name in per_source:
        spec = what_if.get(name, WhatIf())
        thresholds = list(spec.thresholds) or default_thresholds(overall[name])
        tables[name] = what_if_table(con, files, name, spec.direction, thresholds)
    return {"scores": per_source, "what_if": tables}


def _check_names(what_if: dict[str, WhatIf], present: list[str]) -> None:
    unknown = sorted(set(what_if) - set(present))
    if unknown:
        names = ", ".join(present) if present else "none"
        missing = ", ".join(map(repr, unknown))
        raise CurationError(f"--what-if: no score named {missing} in this build (scores: {names})")


def score_stats(
    con: duckdb.DuckDBPyConnection, files: list[str], samples: dict[str, int]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """One pass: per score and source (every source of ``samples``) and per score build-wide, the count of
    samples with the score, the missing ones, min, p10-p90, max and mean."""
    per_source: dict[str, dict[str, dict[str, Any]]] = {}
    overall: dict[str, dict[str, Any]] = {}
    for name, source, n, lo, qs, hi, mean in con.execute(STATS_SQL, {"files": files}).fetchall():
        total = sum(samples.values()) if source is None else samples.get(source, 0)
        cell = _cell(int(n), total, lo, qs, hi, mean)
        if source is None:
            overall[name] = cell
        else:
            per_source.setdefault(name, {})[source] = cell
    for name, cells in per_source.items():
        per_source[name] = {s: cells.get(s) or _cell(0, n, None, None, None, None) for s, n in sorted(samples.items())}
    return per_source, overall


def _cell(n: int, total: int, lo: Any, qs: Any, hi: Any, mean: Any) -> dict[str, Any]:
    quantiles = qs or [None] * len(QUANTILES)
    cell: dict[str, Any] = {"count": n, "missing": total - n, "min": _float(lo)}
    cell.update({f"p{round(q * 100)}": _float(v) for q, v in zip(QUANTILES, quantiles, strict=True)})
    cell.update({"max": _float(hi), "mean": _float(mean)})
    return cell


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def default_thresholds(overall: dict[str, Any]) -> list[float]:
    """The build-wide p10, p25, p50 and p75, rounded to 3 significant digits, without repeats."""
    values = [overall[q] for q in DEFAULT_QUANTILES if overall.get(q) is not None]
    return sorted({float(f"{v:.3g}") for v in values})


def what_if_table(
    con: duckdb.DuckDBPyConnection, files: list[str], name: str, direction: Direction, thresholds: list[float]
) -> dict[str, Any]:
    """One pass: per source, its samples and answer tokens and those kept at each threshold (samples without
    the score are kept)."""
    params: dict[str, Any] = {"files": files, "name": name}
    kept = []
    for i, t in enumerate(thresholds):
        params[f"t{i}"] = t
        where = f"v IS NULL OR v {direction} $t{i}"
        kept.append(f"count(*) FILTER (WHERE {where}), coalesce(sum(answer_tokens) FILTER (WHERE {where}), 0)")
    value = VALUE.format(x="map_extract_value(scores, $name)")
    sql = (
        f"SELECT source, count(*), coalesce(sum(answer_tokens), 0){''.join(', ' + k for k in kept)} "
        f"FROM (SELECT source, answer_tokens, {value} AS v FROM read_parquet($files)) GROUP BY source ORDER BY source"
    )
    sources = {}
    for source, n, tokens, *counts in con.execute(sql, params).fetchall():
        sources[source] = {
            "samples": int(n),
            "answer_tokens": int(tokens),
            "kept": [
                {"threshold": t, "samples": int(counts[2 * i]), "answer_tokens": int(counts[2 * i + 1])}
                for i, t in enumerate(thresholds)
            ],
        }
    return {"direction": direction, "thresholds": list(thresholds), "sources": sources}


def score_histograms(con: duckdb.DuckDBPyConnection, files: list[str], scores: dict[str, Any]) -> dict[str, Any]:
    """Per score, up to :data:`HIST_BINS` equal-width bins between its build-wide min and max, counted per
    source, in the shape :func:`curation.report.plots.histogram` draws; one pass for all scores."""
    hists = {name: h for name, cells in scores.items() if (h := _empty_hist(name, cells))}
    if not hists:
        return {}
    params: dict[str, Any] = {"files": files}
    cases = []
    for i, (name, h) in enumerate(hists.items()):
        params.update({f"n{i}": name, f"lo{i}": h["lo"], f"w{i}": h["width"]})
        last = len(h["labels"]) - 1
        cases.append(f"WHEN name = $n{i} THEN least(greatest(floor((v - $lo{i}) / $w{i}), 0), {last})::INTEGER")
    sql = f"""
        SELECT name, source, CASE {" ".join(cases)} END AS b, count(*) FROM (
            SELECT source, e.key AS name, {VALUE.format(x="e.value")} AS v
            FROM (SELECT source, unnest(map_entries(scores)) AS e FROM read_parquet($files)
                  WHERE cardinality(scores) > 0)
        ) WHERE v IS NOT NULL GROUP BY ALL"""
    for name, source, b, n in con.execute(sql, params).fetchall():
        if name not in hists or b is None:
            continue
        h = hists[name]
        cell = h["sources"].setdefault(source, {"n": 0, "counts": [0] * len(h["labels"])})
        for c in (cell, h["overall"]):
            c["counts"][b] += int(n)
            c["n"] += int(n)
    for h in hists.values():
        h["sources"] = dict(sorted(h["sources"].items()))
    return hists


def _empty_hist(name: str, cells: dict[str, Any]) -> dict[str, Any] | None:
    """The bins of a score's histogram (one bin when every value is the same), no counts yet."""
    lo = min((c["min"] for c in cells.values() if c["min"] is not None), default=None)
    hi = max((c["max"] for c in cells.values() if c["max"] is not None), default=None)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    bins = HIST_BINS if hi > lo else 1
    width = (hi - lo) / bins or 1.0
    labels = [f"{lo + width * i:.3g}–{lo + width * (i + 1):.3g}" for i in range(bins)] if hi > lo else [f"{lo:.3g}"]
    zero = {"n": 0, "counts": [0] * bins}
    return {"title": f"score: {name}", "labels": labels, "lo": lo, "width": width, "overall": zero, "sources": {}}


# ---- tables ------------------------------------------------------------------------------------------
STAT_HEADERS = ["score", "source", "count", "missing", "min", "p10", "p25", "p50", "p75", "p90", "max", "mean"]
WHAT_IF_HEADERS = ["threshold", "source", "samples kept", "% samples", "answer tokens kept", "% answer tokens"]
ALL_SOURCES = "(all sources)"


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def scores_table(report: dict[str, Any]) -> Table:
    """Every score's distribution per source (missing: samples without the score)."""
    rows = [
        [name, source, f"{c['count']:,}", f"{c['missing']:,}", *(_num(c[k]) for k in STAT_KEYS[2:])]
        for name, cells in report.get("scores", {}).items()
        for source, c in cells.items()
    ]
    return Table("scores per source", STAT_HEADERS, rows, numeric=range(2, len(STAT_HEADERS)))


def what_if_tables(report: dict[str, Any]) -> list[Table]:
    """Per score: at each threshold, the samples and answer tokens each source (and the build) would keep."""
    return [_what_if_table(name, w) for name, w in report.get("what_if", {}).items()]


def _what_if_table(name: str, w: dict[str, Any]) -> Table:
    op, dropped = w["direction"], "<" if w["direction"] == ">=" else ">="
    rows: list[list[str]] = []
    subtotals = []
    sources = w["sources"]
    for i, t in enumerate(w["thresholds"]):
        label = f"{op} {t:g}"
        for source, s in sources.items():
            rows.append([label, source, *_kept_cells(s["kept"][i], s)])
        if len(sources) > 1:
            total = {k: sum(s[k] for s in sources.values()) for k in ("samples", "answer_tokens")}
            kept = {k: sum(s["kept"][i][k] for s in sources.values()) for k in ("samples", "answer_tokens")}
            subtotals.append(len(rows))
            rows.append([label, ALL_SOURCES, *_kept_cells(kept, total)])
    title = (
        f"what-if {name}: kept when samples with {name} {dropped} threshold are dropped "
        f"(samples without {name} are kept)"
    )
    return Table(title, WHAT_IF_HEADERS, rows, numeric=(2, 3, 4, 5), subtotals=subtotals)


def _kept_cells(kept: dict[str, int], total: dict[str, int]) -> list[str]:
    def pct(k: str) -> str:
        return f"{100 * kept[k] / total[k]:.1f}" if total[k] else ""

    return [f"{kept['samples']:,}", pct("samples"), f"{kept['answer_tokens']:,}", pct("answer_tokens")]


def score_tables(report: dict[str, Any]) -> list[Table]:
    """The scores table and the what-if tables (none for a build without scores)."""
    if not report.get("scores"):
        return []
    return [scores_table(report), *what_if_tables(report)]
