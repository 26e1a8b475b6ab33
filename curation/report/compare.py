"""What changed between two builds: per-source numbers and shares, drops, totals, shards, mixture shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from curation.report.audit import audit
from curation.report.table import Table, markdown_table, rich_table
from shards import read_manifest

SOURCE_METRICS = ("samples", "answer_tokens", "text_tokens", "images", "mix_pct")


def _delta(a: float, b: float) -> dict[str, Any]:
    """``a``, ``b``, the absolute change and the relative change in percent (None from 0)."""
    d = round(b - a, 4) if isinstance(a, float) or isinstance(b, float) else b - a
    return {"a": a, "b": b, "delta": d, "pct": round(100.0 * (b - a) / a, 2) if a else None}


def _sources(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in sorted(set(ra["sources"]) | set(rb["sources"])):
        sa, sb = ra["sources"].get(name), rb["sources"].get(name)
        status = "added" if sa is None else "removed" if sb is None else "kept"
        out[name] = {
            "status": status,
            **{m: _delta((sa or {}).get(m, 0), (sb or {}).get(m, 0)) for m in SOURCE_METRICS},
        }
    return out


def _drops(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    """Per step and reason: drops in a, in b and the change (only pairs seen in either)."""
    out: dict[str, dict[str, Any]] = {}
    a, b = ra["dropped_by_step"], rb["dropped_by_step"]
    for step in sorted(set(a) | set(b)):
        reasons = sorted(set(a.get(step, {})) | set(b.get(step, {})))
        out[step] = {r: _delta(a.get(step, {}).get(r, 0), b.get(step, {}).get(r, 0)) for r in reasons}
    return out


def _shards(a: Path, b: Path) -> dict[str, Any]:
    """Shards by name (added/removed/changed/identical) and by content (tar sha256 in either build)."""
    sa = {s.name: s.sha256 for s in read_manifest(a).shards}
    sb = {s.name: s.sha256 for s in read_manifest(b).shards}
    common = sorted(set(sa) & set(sb))
    content_a, content_b = set(sa.values()), set(sb.values())
    return {
        "by_name": {
            "identical": [n for n in common if sa[n] == sb[n]],
            "changed": [n for n in common if sa[n] != sb[n]],
            "added": sorted(set(sb) - set(sa)),
            "removed": sorted(set(sa) - set(sb)),
        },
        "by_content": {
            "identical": len(content_a & content_b),
            "added": sorted(n for n, h in sb.items() if h not in content_a),
            "removed": sorted(n for n, h in sa.items() if h not in content_b),
        },
    }


def _mixture(ra: dict[str, Any], rb: dict[str, Any]) -> dict[str, Any]:
    ma, mb = ra["mixture"], rb["mixture"]
    out = {}
    for name in sorted(set(ma) | set(mb)):
        ca, cb = ma.get(name, {}), mb.get(name, {})
        out[name] = {
            "target_share": {"a": ca.get("target_share"), "b": cb.get("target_share")},
            "achieved_share": _delta(ca.get("achieved_share", 0.0), cb.get("achieved_share", 0.0)),
            "samples": _delta(ca.get("samples", 0), cb.get("samples", 0)),
        }
    return out


def compare(a: Path, b: Path) -> dict[str, Any]:
    """What changed from build ``a`` to build ``b`` (each a built dataset directory)."""
    ra, rb = audit(Path(a)), audit(Path(b))
    sources = _sources(ra, rb)
    totals = {
        k: _delta(ra["totals"].get(k, 0), rb["totals"].get(k, 0)) for k in sorted(set(ra["totals"]) | set(rb["totals"]))
    }
    totals["input"] = _delta(ra["input"], rb["input"])
    totals["dropped"] = _delta(sum(ra["dropped"].values()), sum(rb["dropped"].values()))
    doc = {
        "a": {"dataset": ra["dataset"], "kind": ra["kind"], "recipe_sha256": ra["recipe_sha256"]},
        "b": {"dataset": rb["dataset"], "kind": rb["kind"], "recipe_sha256": rb["recipe_sha256"]},
        "same_recipe": ra["recipe_sha256"] == rb["recipe_sha256"],
        "sources": sources,
        "sources_added": [n for n, s in sources.items() if s["status"] == "added"],
        "sources_removed": [n for n, s in sources.items() if s["status"] == "removed"],
        "dropped": {
            r: _delta(ra["dropped"].get(r, 0), rb["dropped"].get(r, 0))
            for r in sorted(set(ra["dropped"]) | set(rb["dropped"]))
        },
        "dropped_by_step": _drops(ra, rb),
        "totals": totals,
        "shards": _shards(Path(a), Path(b)),
        "mixture": _mixture(ra, rb),
    }
    doc["changed"] = _changed(doc)
    return doc


def _changed(doc: dict[str, Any]) -> bool:
    numbers = [d for s in doc["sources"].values() for m, d in s.items() if m != "status"]
    numbers += list(doc["dropped"].values()) + list(doc["totals"].values())
    numbers += [c["achieved_share"] for c in doc["mixture"].values()]
    shards = doc["shards"]["by_name"]
    return (
        not doc["same_recipe"]
        or any(d["delta"] for d in numbers)
        or bool(doc["sources_added"] or doc["sources_removed"])
        or bool(shards["changed"] or shards["added"] or shards["removed"])
    )


# ---- rendering -------------------------------------------------------------------------------------
def _fmt(d: dict[str, Any], share: bool = False) -> list[str]:
    if share:
        return [f"{d['a']:.2f}", f"{d['b']:.2f}", f"{d['delta']:+.2f}"]
    pct = "" if d["pct"] is None else f"{d['pct']:+.1f}%"
    return [f"{d['a']:,}", f"{d['b']:,}", f"{d['delta']:+,}", pct]


SOURCE_HEADERS = ["source", "status", "samples A", "samples B", "Δ samples", "Δ %", "answer tok A", "answer tok B"]
SOURCE_HEADERS += ["Δ answer tok", "Δ %", "share A", "share B", "Δ share (pp)"]


def _source_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [
        [name, s["status"], *_fmt(s["samples"]), *_fmt(s["answer_tokens"]), *_fmt(s["mix_pct"], share=True)]
        for name, s in doc["sources"].items()
    ]


def _total_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [[k, *_fmt(d)] for k, d in doc["totals"].items()]


def _drop_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [[step, r, *_fmt(d)] for step, rs in doc["dropped_by_step"].items() for r, d in rs.items()]


def _shard_rows(doc: dict[str, Any]) -> list[list[str]]:
    by_name, by_content = doc["shards"]["by_name"], doc["shards"]["by_content"]
    rows = [["by name", k, f"{len(v):,}", ", ".join(v)] for k, v in by_name.items()]
    rows.append(["by content", "identical", f"{by_content['identical']:,}", ""])
    rows += [["by content", k, f"{len(by_content[k]):,}", ", ".join(by_content[k])] for k in ("added", "removed")]
    return rows


def _mixture_rows(doc: dict[str, Any]) -> list[list[str]]:
    return [
        [
            name,
            "" if c["target_share"]["a"] is None else f"{c['target_share']['a']:.2f}",
            "" if c["target_share"]["b"] is None else f"{c['target_share']['b']:.2f}",
            *_fmt(c["achieved_share"], share=True),
            *_fmt(c["samples"])[:3],
        ]
        for name, c in doc["mixture"].items()
    ]


MIXTURE_HEADERS = ["component", "target % A", "target % B", "achieved % A", "achieved % B", "Δ pp"]
MIXTURE_HEADERS += ["samples A", "samples B", "Δ"]


def _tables(doc: dict[str, Any]) -> list[Table]:
    return [
        Table("sources", SOURCE_HEADERS, _source_rows(doc), numeric=range(2, len(SOURCE_HEADERS))),
        Table("totals", ["total", "A", "B", "Δ", "Δ %"], _total_rows(doc), numeric=range(1, 5)),
        Table("drops by step and reason", ["step", "reason", "A", "B", "Δ", "Δ %"], _drop_rows(doc), range(2, 6)),
        Table("shards", ["compared", "status", "shards", "names"], _shard_rows(doc), numeric=(2,)),
        Table("mixture: achieved shares", MIXTURE_HEADERS, _mixture_rows(doc), range(1, len(MIXTURE_HEADERS))),
    ]


def _summary(doc: dict[str, Any]) -> str:
    a, b = doc["a"], doc["b"]
    recipe = "same recipe" if doc["same_recipe"] else "recipe changed"
    verdict = "changed" if doc["changed"] else "no change"
    return (
        f"{a['dataset']} ({a['recipe_sha256'][:12]}) -> {b['dataset']} ({b['recipe_sha256'][:12]}): {recipe}, {verdict}"
    )


def render_compare_markdown(doc: dict[str, Any]) -> str:
    """The comparison as markdown tables."""
    lines = ["## Comparison", "", _summary(doc) + "."]
    if doc["sources_added"] or doc["sources_removed"]:
        added, removed = ", ".join(doc["sources_added"]) or "none", ", ".join(doc["sources_removed"]) or "none"
        lines += ["", f"Sources added: {added}; removed: {removed}."]
    for table in _tables(doc):
        if table.rows:
            lines += ["", *markdown_table(table)]
    return "\n".join(lines) + "\n"


def render_compare_table(doc: dict[str, Any], console: Console | None = None) -> None:
    """The comparison as rich tables."""
    console = console or Console()
    console.print(_summary(doc))
    for table in _tables(doc):
        if table.rows:
            console.print(rich_table(table))
