"""The audit report: self-contained HTML and markdown with the audit's numbers, valid plots, previews read
from only the shards that hold them, and target versus achieved shares for mixtures."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.build.runner import build
from curation.mixture.build import build_mixture
from curation.recipe import validate_recipe
from curation.report.audit import audit
from curation.report.audit_page import write_audit_report
from curation.report.previews import NO_REJECTS
from curation.report.stats import distributions, download_success
from shards import read_manifest, reader
from shards.manifest import DatasetManifest
from tests.builds import demo_recipe, make_inputs
from tests.integration.test_mixture import SHARES, _conversations, _mixture

SECTIONS = ("summary", "table3", "distributions", "quality", "generation", "previews")
PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-inputs")
    make_inputs(root, n_captions=300, n_conversations=80)
    return root


@pytest.fixture(scope="module")
def demo(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "demo"
    build(validate_recipe(demo_recipe(inputs)), out, progress=False)
    return out


@pytest.fixture(scope="module")
def written(demo) -> dict[str, Path]:
    return write_audit_report(demo)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def test_html_is_self_contained_and_has_every_section(demo, written):
    assert written == {"html": demo / "audit.html", "md": demo / "audit.md"}
    page = written["html"].read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page.lower()
    assert "<link" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page) + re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert "no generation step" in page and "no downloads in this build" in page


def test_per_source_numbers_are_the_audits(demo, written):
    report = audit(demo)
    md = written["md"].read_text()
    page = written["html"].read_text()
    for name, s in report["sources"].items():
        cells = [name, "uncategorised", *(f"{s[k]:,}" for k in ("samples", "images", "qa_pairs", "answer_tokens"))]
        assert _md_row([*cells, f"{s['mix_pct']:.2f}"]) in md
        assert "".join(f"<td{' class=n' if i > 1 else ''}>{c}</td>" for i, c in enumerate(cells)) in page
    for step, reasons in report["dropped_by_step"].items():
        for reason, n in reasons.items():
            assert _md_row([step, reason, f"{n:,}"]) in md
    for step, per in report["duplicates"].items():
        for source, others in per.items():
            for other, n in others.items():
                assert _md_row([step, source, other, f"{n:,}"]) in md


def test_funnels_follow_the_accounting(demo, written):
    md = written["md"].read_text()
    for step in read_manifest(demo).accounting["steps"]:
        for source, c in step["sources"].items():
            dropped = sum(c["dropped"].values())
            assert f"| {step['step']} | {c['input']:,} | {c['output']:,} | {dropped:,} |" in md, (source, step)
    assert "### funnel: captions" in md and "### funnel: conversations" in md


def test_plots_are_valid_pngs(written):
    page = written["html"].read_text()
    pngs = PNG_URI.findall(page)
    # 9 distributions' histograms (no pdf pages in the demo) and one funnel per source, at least
    assert len(pngs) >= 8 + 2
    for data in pngs:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.verify()
        assert image.format == "PNG"


def test_distributions_match_the_sidecars(demo):
    sidecars = [demo / s.sidecar for s in read_manifest(demo).shards]
    rows = [r for p in sidecars for r in pq.read_table(p).to_pylist()]
    d = distributions(sidecars, threads=1)
    assert "pages" not in d  # no pdf samples
    assert d["image_width"]["overall"]["n"] == sum(r["n_images"] for r in rows)
    assert d["image_longest_side"]["overall"]["max"] == max(v for r in rows for v in r["widths"] + r["heights"])
    assert d["answer_tokens"]["overall"]["max"] == max(r["answer_tokens"] for r in rows)
    for name in ("turns", "answer_tokens"):
        per_source = d[name]["sources"]
        assert sum(c["n"] for c in per_source.values()) == len(rows) == sum(d[name]["overall"]["counts"])
        assert {s: c["n"] for s, c in per_source.items()} == {
            s: sum(r["source"] == s for r in rows) for s in {r["source"] for r in rows}
        }


def test_previews_show_kept_and_rejected_samples(demo, written):
    page = written["html"].read_text()
    m = read_manifest(demo)
    first: dict[str, list[str]] = {}
    for s in m.shards:
        for r in pq.read_table(demo / s.sidecar, columns=["key", "source"]).to_pylist():
            first.setdefault(r["source"], []).append(r["key"])
    previews = page[page.index('<section id="previews">') :]
    for source, keys in first.items():
        assert f"<h3>{source}: kept</h3>" in previews
        for key in keys[:3]:
            assert f"<b>{key}</b>" in previews
    assert "<h3>captions: rejected</h3>" in previews
    rejected = [r for s in m.rejects for r in pq.read_table(demo / s.sidecar).to_pylist()]
    shown = re.findall(r'<div class="reason">([^<]*)</div>', previews)
    assert len(shown) == 3
    assert set(shown) <= {f"{r['step']}: {r['reason']}" for r in rejected}
    assert len(set(shown)) == 3  # distinct reasons first
    assert previews.count('src="data:image/jpeg;base64,') >= 6  # kept samples' thumbnails
    assert "conversations: no samples of this source rejected" in previews


def test_previews_read_only_the_shards_they_need(demo, tmp_path, monkeypatch):
    real = reader.iter_members
    read: dict[str, int] = {}

    def spy(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
        name = str(Path(path).relative_to(demo))
        read[name] = 0
        for item in real(path):
            read[name] += 1
            yield item

    monkeypatch.setattr(reader, "iter_members", spy)
    write_audit_report(demo, tmp_path / "a.html", tmp_path / "a.md")
    m = read_manifest(demo)
    holding = {}
    for s in m.shards:
        for r in pq.read_table(demo / s.sidecar, columns=["source", "index"]).to_pylist():
            holding.setdefault(r["source"], (s.name, r["index"]))
    kept_read = {n: c for n, c in read.items() if not n.startswith("rejects/")}
    assert kept_read == {name: 3 for name, _ in holding.values()}  # the first 3 of each source, then stop
    assert len(kept_read) < len(m.shards)
    rejects_read = {n for n in read if n.startswith("rejects/")}
    assert rejects_read and rejects_read < {s.name for s in m.rejects}


def test_markdown_has_the_tables_and_no_images(written):
    md = written["md"].read_text()
    for heading in (
        "## Sources by category (Table 3)",
        "## Distributions",
        "## Quality",
        "## Previews",
        "### drops by step and reason",
        "### duplicates per source pair",
        "### image width (px): quantiles",
        "### aspect ratio (width / height): histogram (aspect_ratio)",
        "### turns (QA pairs) per sample: quantiles",
        "### captions: rejected",
    ):
        assert heading in md, heading
    assert "| source | category | samples | images | QA pairs | answer tokens | % mix |" in md
    assert "data:" not in md


def test_report_is_deterministic(demo, written, tmp_path):
    again = write_audit_report(demo, tmp_path / "b.html", tmp_path / "b.md")
    assert again["html"].read_bytes() == written["html"].read_bytes()
    assert again["md"].read_bytes() == written["md"].read_bytes()


def test_without_rejects_the_report_says_how_to_keep_them(inputs, tmp_path):
    out = build(validate_recipe(demo_recipe(inputs, output__rejects=False)), tmp_path / "ds", progress=False).out
    paths = write_audit_report(out)
    assert NO_REJECTS in paths["html"].read_text() and NO_REJECTS in paths["md"].read_text()


def test_download_success_counts_download_failures():
    steps = [
        {
            "step": "read",
            "sources": {
                "laion": {
                    "input": 100,
                    "output": 70,
                    "dropped": {"not_selected": 10, "download_failed:timeout": 15, "resize_failed": 5},
                },
                "local": {"input": 5, "output": 5, "dropped": {}},
            },
        },
    ]
    manifest = DatasetManifest.model_construct(accounting={"steps": steps, "sources": {}})
    assert download_success(manifest) == {
        "laion": {"attempted": 90, "failed": 15, "by_kind": {"timeout": 15}, "success_pct": 83.33}
    }


def test_mixture_shows_target_versus_achieved_by_category(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    _conversations(root / "alpha.jsonl", "alpha", 120, 1)
    _conversations(root / "beta.jsonl", "beta", 60, 2)
    _conversations(root / "gamma.jsonl", "gamma", 40, 3, images=True)
    built = {}
    for name, sources in (("text", ["alpha", "beta"]), ("pics", ["gamma"])):
        recipe = {
            "name": name,
            "sources": [
                {"name": s, "reader": "jsonl", "record": "sft", "path": str(root / f"{s}.jsonl")}
                | {"image_root": str(root), "fields": {"key": "id"}}
                | ({"category": "text_only"} if name == "text" else {})
                for s in sources
            ],
            "output": {"kind": "sft"},
        }
        built[name] = build(validate_recipe(recipe), tmp_path / name, progress=False).out
    out = build_mixture(validate_recipe(_mixture(built, SHARES)), tmp_path / "mix", progress=False).out
    paths = write_audit_report(out)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    report = audit(out)
    components = list(report["mixture"])
    assert components == ["gamma", "alpha", "beta"]  # grouped by category (captioning before text_only)
    for name, c in report["mixture"].items():
        assert f"| {name} | {c['category']} | " in md
        assert f"{c['target_share']:.2f} | {c['achieved_share']:.2f} |" in md
    for category, members in (("captioning", ["gamma"]), ("text_only", ["alpha", "beta"])):
        target = sum(report["mixture"][m]["target_share"] for m in members)
        achieved = sum(report["mixture"][m]["achieved_share"] for m in members)
        assert _md_row([category, f"{target:.2f}", f"{achieved:.2f}"]) in md
    assert "mixture: target versus achieved (grouped by category)" in page
    assert len(PNG_URI.findall(page)) >= 2 + len(read_manifest(out).accounting["steps"][0]["sources"])
