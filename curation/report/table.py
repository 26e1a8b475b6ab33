"""One table type and its renderers: markdown, HTML and a rich console table, each with one escaping rule.

Every table of the audit, the audit report, the dataset card, ``compare`` and the selection reports is a
:class:`Table`; nothing else writes ``|`` rows or ``<td>`` cells by hand."""

from __future__ import annotations

import html
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rich.table import Table as RichTable
from rich.text import Text


@dataclass(frozen=True)
class Table:
    """A titled (or untitled) table of text cells.

    ``numeric``: indices of the columns that hold numbers (right-aligned in every format);
    ``subtotals``: indices of the rows that sum the rows above them (emphasised in HTML)."""

    title: str | None
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: Collection[int] = ()
    subtotals: Collection[int] = ()

    def __post_init__(self) -> None:
        width = len(self.headers)
        for i, row in enumerate(self.rows):
            if len(row) != width:
                raise ValueError(f"table {self.title!r}: row {i} has {len(row)} cells for {width} columns")
        if any(not 0 <= c < width for c in self.numeric):
            raise ValueError(f"table {self.title!r}: numeric columns {sorted(self.numeric)} outside 0..{width - 1}")


# ---- markdown ----------------------------------------------------------------------------------------
def md_escape(text: str) -> str:
    """A markdown table cell: whitespace runs (newlines included) become one space, ``|`` becomes ``\\|``."""
    return " ".join(text.split()).replace("|", "\\|")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(table: Table) -> list[str]:
    """The table's lines: a ``### title`` heading and a blank line when titled, the header row, the alignment
    row (``---:`` for numeric columns) and the rows. A table without columns has no lines."""
    if not table.headers:
        return []
    head = [f"### {md_escape(table.title)}", ""] if table.title is not None else []
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    return [
        *head,
        _md_row([md_escape(h) for h in table.headers]),
        _md_row(align),
        *(_md_row([md_escape(c) for c in row]) for row in table.rows),
    ]


# ---- HTML --------------------------------------------------------------------------------------------
def html_table(table: Table) -> str:
    """``<h3>title</h3>`` when titled, then the ``<table>``: numeric cells ``class=n``, subtotal rows
    ``class=sub``; every text through :func:`html.escape`. A table without columns is the empty string."""
    if not table.headers:
        return ""
    esc = html.escape
    head = f"<h3>{esc(table.title)}</h3>" if table.title is not None else ""
    ths = "".join(f"<th>{esc(h)}</th>" for h in table.headers)
    body = "".join(
        f"<tr{' class=sub' if r in table.subtotals else ''}>"
        + "".join(f"<td{' class=n' if i in table.numeric else ''}>{esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for r, row in enumerate(table.rows)
    )
    return f"{head}<table><tr>{ths}</tr>{body}</table>"


# ---- console -----------------------------------------------------------------------------------------
def rich_table(table: Table, no_wrap: bool = False) -> RichTable:
    """The table for a rich console: cells are plain :class:`~rich.text.Text` (never markup), numeric
    columns right-justified."""
    title = None if table.title is None else Text(table.title, style="table.title")
    out = RichTable(title=title)
    for i, h in enumerate(table.headers):
        out.add_column(Text(h), justify="right" if i in table.numeric else "left", no_wrap=no_wrap)
    for row in table.rows:
        out.add_row(*(Text(c) for c in row))
    return out
