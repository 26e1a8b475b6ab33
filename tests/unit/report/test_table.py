"""The one table type and its renderers (markdown, HTML, rich), the report blocks, and the audit's markdown of a
build whose source name holds a ``|``: every table still has one column count."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.report.audit import audit, render_markdown, render_table
from curation.report.audit_page import write_audit_report
from curation.report.blocks import Cards, Figure, Paragraph, Section, block_html, block_markdown
from curation.report.card import dataset_card
from curation.report.compare import compare, render_compare_markdown
from curation.report.table import Table, html_table, markdown_table, md_escape, rich_table
from shards import read_manifest

PIPE_NAME = "al|pha"
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
ALIGN_ROW = re.compile(r"^\| ---:?( \| ---:?)* \|$")


def test_markdown_escapes_pipes_and_collapses_whitespace():
    t = Table("a | b", ["h|1", "h 2"], [["x|y", "one\ntwo  \t three\r\n"]])
    assert markdown_table(t) == [
        "### a \\| b",
        "",
        "| h\\|1 | h 2 |",
        "| --- | --- |",
        "| x\\|y | one two three |",
    ]
    assert md_escape("  lead\n\ntrail  ") == "lead trail"


def test_markdown_alignment_row_right_aligns_numeric_columns():
    t = Table(None, ["name", "count", "note", "%"], [["a", "1,234", "n", "12.50"]], numeric=(1, 3))
    lines = markdown_table(t)
    assert lines[0] == "| name | count | note | % |"  # untitled: no heading
    assert lines[1] == "| --- | ---: | --- | ---: |"
    assert lines[2] == "| a | 1,234 | n | 12.50 |"


def test_html_escapes_and_marks_numeric_cells_and_subtotals():
    t = Table("<b>&", ["k<", "n"], [["a & b", "1"], ["<script>", "2"], ["all (total)", "3"]], (1,), subtotals=(2,))
    page = html_table(t)
    assert page.startswith("<h3>&lt;b&gt;&amp;</h3><table><tr><th>k&lt;</th><th>n</th></tr>")
    assert "<tr><td>a &amp; b</td><td class=n>1</td></tr>" in page
    assert "<td>&lt;script&gt;</td>" in page and "<script>" not in page
    assert "<tr class=sub><td>all (total)</td><td class=n>3</td></tr>" in page
    assert page.count("class=n") == 3 and page.count("class=sub") == 1
    assert "<h3>" not in html_table(Table(None, ["a"], [["1"]]))
    quoted = html_table(Table(None, ['"q"'], [["it's"]]))
    assert "<th>&quot;q&quot;</th>" in quoted and "<td>it&#x27;s</td>" in quoted


def test_empty_table():
    t = Table("nothing", ["a", "b"], [], numeric=(1,))
    assert markdown_table(t) == ["### nothing", "", "| a | b |", "| --- | ---: |"]
    assert html_table(t) == "<h3>nothing</h3><table><tr><th>a</th><th>b</th></tr></table>"
    assert markdown_table(Table(None, [], [])) == [] and html_table(Table(None, [], [])) == ""
    assert block_markdown(t) == [*markdown_table(t), ""]


def test_rows_must_fit_the_headers():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        Table("t", ["a", "b"], [["1", "2"], ["3"]])
    with pytest.raises(ValueError, match="numeric columns"):
        Table("t", ["a"], [["1"]], numeric=(1,))


def test_rich_table_shows_cells_as_plain_text_and_right_aligns_numbers():
    t = Table("[bold]t[/bold]", ["name", "n"], [["[red]x[/red]", "7"]], numeric=(1,))
    rt = rich_table(t)
    assert [c.justify for c in rt.columns] == ["left", "right"]
    out = io.StringIO()
    Console(file=out, width=80).print(rt)
    assert "[red]x[/red]" in out.getvalue() and "[bold]t[/bold]" in out.getvalue()


def test_blocks_render_to_markdown_and_html():
    sec = Section("s", "S")
    sec.text("a <b> & c")
    sec.table("empty", ["a"], [])  # left out: no rows
    sec.image("no image", "")  # left out: no image
    sec.image("plot", "data:image/png;base64,AAAA")
    sec.add(Table("t", ["k", "n"], [["x|y", "1"]], numeric=(1,)))
    item = {"key": "k<1>", "images": [""], "texts": ["line\none", "two"], "step": "s", "reason": "r|x", "detail": ""}
    sec.add(Cards("rejected", [item]))
    sec.add(Cards("kept", []))
    assert [type(b) for b in sec.blocks] == [Paragraph, Figure, Table, Cards, Cards]
    md = [line for b in sec.blocks for line in block_markdown(b)]
    assert md == [
        "a <b> & c",
        "",
        *["### t", "", "| k | n |", "| --- | ---: |", "| x\\|y | 1 |", ""],
        *[
            "### rejected",
            "",
            "| key | reason | text |",
            "| --- | --- | --- |",
            "| k<1> | s: r\\|x () | line one / two |",
        ],
        "",
    ]
    page = "".join(block_html(b) for b in sec.blocks)
    assert "<p>a &lt;b&gt; &amp; c</p>" in page and '<img alt="plot" src="data:image/png;base64,AAAA">' in page
    assert "<b>k&lt;1&gt;</b>" in page and '<div class="reason">s: r|x</div>' in page
    assert "<h3>kept</h3>" not in page


# ---- the audit's markdown of a build whose source name holds a pipe ------------------------------------------
def _tables(md: str) -> list[list[str]]:
    """Runs of consecutive lines that start with ``|``."""
    tables: list[list[str]] = []
    run: list[str] = []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            run.append(line)
        elif run:
            tables.append(run)
            run = []
    return tables


def _assert_tables_parse(md: str) -> int:
    """Every table: a header, an alignment row, rows of the header's column count; returns how many."""
    tables = _tables(md)
    for lines in tables:
        assert len(lines) >= 2 and ALIGN_ROW.match(lines[1]), lines[:2]
        counts = {len(UNESCAPED_PIPE.split(line)) for line in lines}
        assert len(counts) == 1, lines
    return len(tables)


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> Path:
    """A two-source build whose source ``alpha`` is renamed ``al|pha`` in its sidecars and manifest (recipes
    allow no ``|`` in names; other readers' sources may hold one)."""
    root = tmp_path_factory.mktemp("piped")
    for name, n in (("alpha", 6), ("beta", 4)):
        rows = [{"id": f"{name}-{i}", "turns": [{"user": "q?", "assistant": "yes " * (i % 3 + 1)}]} for i in range(n)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "piped",
        "sources": [
            {"name": s, "reader": "jsonl", "record": "sft", "path": str(root / f"{s}.jsonl"), "fields": {"key": "id"}}
            for s in ("alpha", "beta")
        ],
        "steps": [{"step": "text_length", "min_words": 2, "field": "answers"}],
        "output": {"kind": "sft", "rejects": True},
    }
    out = build(validate_recipe(recipe), root / "ds", progress=False).out
    manifest = read_manifest(out)
    for shard in [*manifest.shards, *manifest.rejects]:
        table = pq.read_table(out / shard.sidecar)
        i = table.schema.get_field_index("source")
        renamed = [PIPE_NAME if s == "alpha" else s for s in table.column("source").to_pylist()]
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(renamed, pa.string())), out / shard.sidecar)
    path = out / "dataset.json"
    path.write_text(path.read_text().replace('"alpha"', json.dumps(PIPE_NAME)))
    return out


def test_audit_markdown_parses_with_a_pipe_in_a_source_name(piped, tmp_path):
    report = audit(piped)
    assert PIPE_NAME in report["sources"] and report["sources"][PIPE_NAME]["samples"] > 0
    md = render_markdown(report)
    assert _assert_tables_parse(md) >= 2  # sources, drops
    assert "| al\\|pha |" in md
    console = io.StringIO()
    render_table(report, Console(file=console, width=200))
    assert PIPE_NAME in console.getvalue()

    paths = write_audit_report(piped, tmp_path / "a.html", tmp_path / "a.md")
    assert _assert_tables_parse(paths["md"].read_text()) >= 5
    assert "<td>al|pha</td>" in paths["html"].read_text()
    card = dataset_card(piped)
    assert _assert_tables_parse(card) >= 4 and "| al\\|pha |" in card
    assert _assert_tables_parse(render_compare_markdown(compare(piped, piped))) >= 3
