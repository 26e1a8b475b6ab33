"""Score distributions and what-if tables (curation.report.scores): exact numbers against plain Python over
sidecars written with pyarrow, the --what-if syntax, a build without scores, and a real build end to end."""

from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curation import __version__
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.report.audit import audit, render_json, render_markdown, render_table
from curation.report.audit_page import build_sections
from curation.report.scores import (
    SPEC_FORM,
    WhatIf,
    has_scores,
    parse_what_if,
    parse_what_ifs,
    score_histograms,
)
from schemas import SIDECAR_SCHEMA
from shards.manifest import DatasetManifest, ShardInfo
from tests.builds import CLI

QS = {"p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9}
CLIP = {  # per source, per sample: the clip_score (None: no score; nan: counts as missing)
    "alpha": [0.31, 0.12, None, 0.27, 0.45, 0.18, 0.22, None, 0.39, 0.05],
    "beta": [0.5, math.nan, 0.33, 0.21, None, 0.29, 0.41],
    "gamma": [None, None, None],
}
PUNSAFE = {"beta": [0.9, 0.01, 0.2, None, 0.55, 0.3, 0.02]}
ID = {"key": "id"}  # the jsonl field of the samples' keys (the real build)


# ---- data ---------------------------------------------------------------------------------------------
def sample_rows() -> list[dict[str, Any]]:
    """Sidecar rows with known scores and answer tokens (distinct per sample)."""
    rows = []
    for source, clips in CLIP.items():
        for i, clip in enumerate(clips):
            scores = {} if clip is None else {"clip_score": clip}
            unsafe = PUNSAFE.get(source, [None] * len(clips))[i]
            if unsafe is not None:
                scores["punsafe"] = unsafe
            rows.append({"source": source, "key": f"{source}-{i:03d}", "answer_tokens": 7 * i + 3, "scores": scores})
    return rows


def sidecar_row(r: dict[str, Any], shard: str, index: int) -> dict[str, Any]:
    values = {
        "key": r["key"],
        "kind": "sft",
        "source": r["source"],
        "shard": shard,
        "index": index,
        "n_images": 0,
        "widths": [],
        "heights": [],
        "image_sha256": [],
        "image_formats": [],
        "text_tokens": r["answer_tokens"] + 5,
        "answer_tokens": r["answer_tokens"],
        "turns": 1,
        "bytes": 100,
        "scores": list(r["scores"].items()) if r["scores"] is not None else None,
    }
    return {f.name: values.get(f.name) for f in SIDECAR_SCHEMA}


def write_build(directory: Path, rows: list[dict[str, Any]], per_shard: int = 8, **parquet: Any) -> Path:
    """Sidecars (no tars: the audit reads only the manifest and the sidecars) and a manifest listing them."""
    directory.mkdir(parents=True, exist_ok=True)
    infos = []
    for n, start in enumerate(range(0, len(rows), per_shard)):
        stem = f"t-{n:06d}"
        chunk = [sidecar_row(r, f"{stem}.tar", i) for i, r in enumerate(rows[start : start + per_shard])]
        pq.write_table(pa.Table.from_pylist(chunk, schema=SIDECAR_SCHEMA), directory / f"{stem}.parquet", **parquet)
        infos.append(
            ShardInfo(name=f"{stem}.tar", sidecar=f"{stem}.parquet", stats=f"{stem}.stats.json", sha256="0" * 64,
                      samples=len(chunk), bytes=100 * len(chunk))
        )  # fmt: skip
    DatasetManifest(
        name="t",
        kind="sft",
        tool_version=__version__,
        recipe={"kind": "build", "name": "t"},
        recipe_sha256="0" * 64,
        shards=infos,
        totals={"samples": len(rows)},
    ).write(directory)
    return directory


@pytest.fixture
def scored(tmp_path) -> Path:
    return write_build(tmp_path / "ds", sample_rows())


# ---- plain-Python references ---------------------------------------------------------------------------
def value(r: dict[str, Any], name: str) -> float | None:
    v = (r["scores"] or {}).get(name)
    return None if v is None or math.isnan(v) else v


def quantile_cont(values: list[float], q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def expected_stats(rows: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    out = {}
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        vals = [v for r in mine if (v := value(r, name)) is not None]
        cell: dict[str, Any] = {"count": len(vals), "missing": len(mine) - len(vals)}
        if vals:
            cell.update({"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals)})
            cell.update({k: quantile_cont(vals, q) for k, q in QS.items()})
        else:
            cell.update(dict.fromkeys(["min", "max", "mean", *QS], None))
        out[source] = cell
    return out


def expected_kept(rows: list[dict[str, Any]], name: str, op: str, thresholds: list[float]) -> dict[str, Any]:
    def keep(v: float | None, t: float) -> bool:
        return v is None or (v >= t if op == ">=" else v < t)

    out = {}
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        kept = []
        for t in thresholds:
            k = [r for r in mine if keep(value(r, name), t)]
            kept.append({"threshold": t, "samples": len(k), "answer_tokens": sum(r["answer_tokens"] for r in k)})
        out[source] = {"samples": len(mine), "answer_tokens": sum(r["answer_tokens"] for r in mine), "kept": kept}
    return out


def approx_cells(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s: {k: v if v is None else pytest.approx(v, rel=1e-12) for k, v in c.items()} for s, c in cells.items()}


# ---- distributions and what-if ------------------------------------------------------------------------
def test_distributions_per_source_match_plain_python(scored):
    rows = sample_rows()
    report = audit(scored, scores=True)
    assert list(report["scores"]) == ["clip_score", "punsafe"]
    for name in ("clip_score", "punsafe"):
        assert report["scores"][name] == approx_cells(expected_stats(rows, name)), name
    assert report["scores"]["clip_score"]["beta"]["missing"] == 2  # one without the score, one NaN
    assert report["scores"]["punsafe"]["alpha"] == {"count": 0, "missing": 10, **dict.fromkeys(
        ["min", "p10", "p25", "p50", "p75", "p90", "max", "mean"])}  # fmt: skip


def test_what_if_defaults_are_the_build_wide_quantiles_rounded_and_keep_samples_without_the_score(scored):
    rows = sample_rows()
    report = audit(scored, scores=True)
    everything = [v for r in rows if (v := value(r, "clip_score")) is not None]
    thresholds = sorted({float(f"{quantile_cont(everything, q):.3g}") for q in (0.1, 0.25, 0.5, 0.75)})
    w = report["what_if"]["clip_score"]
    assert w["direction"] == ">=" and w["thresholds"] == thresholds
    assert w["sources"] == expected_kept(rows, "clip_score", ">=", thresholds)
    assert all(k["samples"] == 3 for k in w["sources"]["gamma"]["kept"])  # no scores: always kept


def test_what_if_below_keeps_samples_scoring_under_the_threshold(scored):
    rows = sample_rows()
    report = audit(scored, what_if={"punsafe": WhatIf("<", (0.1, 0.5))})
    w = report["what_if"]["punsafe"]
    assert w["direction"] == "<" and w["thresholds"] == [0.1, 0.5]
    assert w["sources"] == expected_kept(rows, "punsafe", "<", [0.1, 0.5])
    assert [k["samples"] for k in w["sources"]["beta"]["kept"]] == [3, 5]  # 0.01, 0.02 + no score; then 0.2, 0.3
    assert report["what_if"]["clip_score"]["direction"] == ">="  # the other scores keep their defaults


def test_json_shape(scored):
    doc = json.loads(render_json(audit(scored, what_if={"clip_score": WhatIf(">=", (0.25,))})))
    assert set(doc["scores"]["clip_score"]["alpha"]) == {
        "count", "missing", "min", "p10", "p25", "p50", "p75", "p90", "max", "mean"}  # fmt: skip
    alpha = doc["what_if"]["clip_score"]["sources"]["alpha"]
    assert doc["what_if"]["clip_score"]["thresholds"] == [0.25]
    kept = 3 + 17 + 24 + 31 + 52 + 59  # samples 0, 2, 3, 4, 7 and 8 (two without the score)
    assert alpha["kept"] == [{"threshold": 0.25, "samples": 6, "answer_tokens": kept}]


def test_tables_in_markdown_and_terminal(scored):
    report = audit(scored, what_if={"clip_score": WhatIf(">=", (0.25,))})
    md = render_markdown(report)
    assert "### scores per source" in md
    assert "| clip_score | beta | 5 | 2 | 0.21 |" in md
    assert "(samples without clip_score are kept)" in md
    rows = sample_rows()
    kept = [r for r in rows if (v := value(r, "clip_score")) is None or v >= 0.25]
    n, tokens, total = len(kept), sum(r["answer_tokens"] for r in kept), sum(r["answer_tokens"] for r in rows)
    assert n == 15
    assert f"| >= 0.25 | (all sources) | 15 | 75.0 | {tokens:,} | {100 * tokens / total:.1f} |" in md
    out = io.StringIO()
    render_table(report, Console(file=out, width=250))
    assert "scores per source" in out.getvalue() and "what-if punsafe" in out.getvalue()


def test_histograms_count_every_value(scored):
    report = audit(scored, scores=True)
    files = sorted(str(p) for p in scored.glob("*.parquet"))
    with duckdb.connect() as con:
        hists = score_histograms(con, files, report["scores"])
    clip = hists["clip_score"]
    assert len(clip["labels"]) == 20 and clip["overall"]["n"] == 13 == sum(clip["overall"]["counts"])
    assert {s: c["n"] for s, c in clip["sources"].items()} == {"alpha": 8, "beta": 5}
    assert clip["sources"]["beta"]["counts"][-1] == 1  # the maximum (0.5) lands in the last bin
    assert clip["overall"]["counts"][0] == 1  # the minimum (0.05) in the first


def test_one_value_gives_one_bin(tmp_path):
    rows = [{"source": "a", "key": f"k{i}", "answer_tokens": 1, "scores": {"s": 2.0}} for i in range(3)]
    d = write_build(tmp_path / "ds", rows)
    report = audit(d, scores=True)
    assert report["what_if"]["s"]["thresholds"] == [2.0]
    with duckdb.connect() as con:
        assert score_histograms(con, [str(d / "t-000000.parquet")], report["scores"])["s"]["overall"]["counts"] == [3]


# ---- builds without scores ------------------------------------------------------------------------------
@pytest.mark.parametrize("empty", [{}, None])  # the writer's empty map; a null (older or other writers)
def test_a_build_without_scores_has_no_score_tables(tmp_path, empty):
    rows = [{**r, "scores": empty} for r in sample_rows()]
    d = write_build(tmp_path / "ds", rows)
    report = audit(d, scores=True)
    assert report["scores"] == {} and report["what_if"] == {}
    assert "scores per source" not in render_markdown(report)
    assert audit(d)["scores"] == {}
    with pytest.raises(CurationError, match=r"no score named 'clip_score' in this build \(scores: none\)"):
        audit(d, what_if={"clip_score": WhatIf()})


def test_detection_without_parquet_statistics_scans(tmp_path):
    scored = write_build(tmp_path / "a", sample_rows(), write_statistics=False)
    bare = write_build(tmp_path / "b", [{**r, "scores": {}} for r in sample_rows()], write_statistics=False)
    with duckdb.connect() as con:
        assert has_scores(con, sorted(str(p) for p in scored.glob("*.parquet")))
        assert not has_scores(con, sorted(str(p) for p in bare.glob("*.parquet")))
        assert not has_scores(con, [])


def test_unknown_score_names_are_listed(scored):
    message = r"no score named 'aesthetic' in this build \(scores: clip_score, punsafe\)"
    with pytest.raises(CurationError, match=message):
        audit(scored, what_if={"aesthetic": WhatIf()})


# ---- --what-if syntax -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "name", "what_if"),
    [
        ("clip_score=0.3,0.2,0.25", "clip_score", WhatIf(">=", (0.2, 0.25, 0.3))),
        ("clip_score>=0.2", "clip_score", WhatIf(">=", (0.2,))),
        ("aesthetic<5,6", "aesthetic", WhatIf("<", (5.0, 6.0))),
        (" punsafe < 0.1 , 0.5 ", "punsafe", WhatIf("<", (0.1, 0.5))),
        ("punsafe<", "punsafe", WhatIf("<", ())),  # the default quantiles, kept below
        ("relevance_min=-1e-3,2", "relevance_min", WhatIf(">=", (-0.001, 2.0))),
        ("x=1,1", "x", WhatIf(">=", (1.0,))),
    ],
)
def test_parse_what_if(spec, name, what_if):
    assert parse_what_if(spec) == (name, what_if)


@pytest.mark.parametrize("spec", ["clip_score", "=0.2", "<1", "clip_score=0.2,", "clip_score=a", "s<=1", "s=nan",
                                  "s=inf", "s>1", ""])  # fmt: skip
def test_bad_what_if_specs_name_the_spec_and_the_form(spec):
    with pytest.raises(CurationError) as err:
        parse_what_if(spec)
    assert repr(spec) in str(err.value) and SPEC_FORM in str(err.value) and "\n" not in str(err.value)


def test_a_score_named_twice_is_an_error():
    with pytest.raises(CurationError, match="named twice"):
        parse_what_ifs(["s=1", "s<2"])


def curate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_cli_what_if(scored):
    res = curate("audit", str(scored), "-f", "json", "--what-if", "clip_score=0.2,0.3", "--what-if", "punsafe<0.5")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["what_if"]["clip_score"]["thresholds"] == [0.2, 0.3]
    assert doc["what_if"]["punsafe"]["sources"] == expected_kept(sample_rows(), "punsafe", "<", [0.5])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("clip_score:0.2", f"--what-if 'clip_score:0.2': expected {SPEC_FORM}"),
        ("aesthetic=5", "--what-if: no score named 'aesthetic' in this build (scores: clip_score, punsafe)"),
    ],
)
def test_cli_what_if_errors_are_one_line_with_exit_2(scored, spec, message):
    res = curate("audit", str(scored), "--what-if", spec)
    assert res.returncode == 2
    assert " ".join(res.stderr.split()) == f"error: {message}"
    assert "Traceback" not in res.stderr


# ---- a real build ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The same two jsonl sources built with and without ``output.sidecar_scores``."""
    root = tmp_path_factory.mktemp("scored")
    for source, clips in (("alpha", CLIP["alpha"]), ("beta", [0.5, 0.33, 0.21, 0.29])):
        rows = [
            {"id": f"{source}-{i}", "turns": [{"user": "q?", "assistant": "yes " * (i + 1)}]}
            | ({} if clip is None else {"clip_score": clip})
            for i, clip in enumerate(clips)
        ]
        (root / f"{source}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for label, output in (("scored", {"sidecar_scores": ["clip_score"]}), ("bare", {})):
        recipe = {
            "name": label,
            "sources": [
                {"name": s, "reader": "jsonl", "record": "sft", "path": str(root / f"{s}.jsonl"), "fields": ID}
                for s in ("alpha", "beta")
            ],
            "output": {"kind": "sft", **output},
        }
        out[label] = build(validate_recipe(recipe), root / label, progress=False).out
    return out


def test_a_real_build_end_to_end(built, tmp_path):
    d = built["scored"]
    rows = [
        {"source": r["source"], "answer_tokens": r["answer_tokens"], "scores": dict(r["scores"] or [])}
        for p in sorted(d.glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    assert sorted(v for r in rows if (v := value(r, "clip_score")) is not None) == sorted(
        c for c in [*CLIP["alpha"], 0.5, 0.33, 0.21, 0.29] if c is not None
    )
    html = tmp_path / "r.html"
    res = curate("audit", str(d), "-f", "json", "--html", str(html), "--what-if", "clip_score=0.25")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scores"]["clip_score"] == approx_cells(expected_stats(rows, "clip_score"))
    assert doc["what_if"]["clip_score"]["sources"] == expected_kept(rows, "clip_score", ">=", [0.25])
    page = html.read_text()
    assert '<section id="scores"><h2>Scores</h2>' in page and 'alt="score: clip_score"' in page
    assert "what-if clip_score" in page and "what-if clip_score" in html.with_suffix(".md").read_text()


def test_a_real_build_without_scores(built):
    res = curate("audit", str(built["bare"]), "-f", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scores"] == {} and doc["what_if"] == {}
    assert "scores" not in [s.id for s in build_sections(built["bare"])]
