"""Report documents: sections of typed blocks, rendered to one self-contained HTML page (inline CSS, images as
data URIs, no scripts) or to markdown. One function per format renders every kind of block."""

from __future__ import annotations

import html
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from curation.report.table import Table, html_table, markdown_table

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.sub td{font-weight:600;background:#fafafa}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;width:250px;font-size:12px}
.card img{max-width:120px;max-height:120px;margin:2px}.reason{color:#b00;font-weight:600}.muted{color:#777}
"""
MAX_CARD_TEXT = 300  # characters of a preview's texts in the markdown table


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Figure:
    """An image (a data URI); HTML only, markdown leaves figures out."""

    alt: str
    uri: str


@dataclass(frozen=True)
class Cards:
    """Sample previews: items ``{key, images: [data URI], texts: [str], step?, reason?, detail?}``
    (:func:`curation.report.previews.previews`)."""

    label: str
    items: list[dict[str, Any]]


Block = Paragraph | Table | Figure | Cards


@dataclass
class Section:
    """A report section: an anchor id, a heading and its blocks in order."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, block: Block) -> None:
        """Append ``block``, except a table without rows or a figure without an image (nothing to show)."""
        if isinstance(block, Table) and not block.rows:
            return
        if isinstance(block, Figure) and not block.uri:
            return
        self.blocks.append(block)

    def text(self, s: str) -> None:
        self.add(Paragraph(s))

    def table(self, title: str, headers: list[str], rows: list[list[str]], numeric: Collection[int] = ()) -> None:
        self.add(Table(title, headers, rows, numeric))

    def image(self, alt: str, uri: str) -> None:
        self.add(Figure(alt, uri))


# ---- HTML --------------------------------------------------------------------------------------------
def render_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + " · ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections[1:]) + "</nav>",
    ]
    for sec in sections:
        out.append(f'<section id="{esc(sec.id)}"><h2>{esc(sec.title)}</h2>')
        out += [block_html(block) for block in sec.blocks]
        out.append("</section>")
    out.append("</body></html>\n")
    return "\n".join(out)


def block_html(block: Block) -> str:
    esc = html.escape
    match block:
        case Paragraph(text):
            return f"<p>{esc(text)}</p>"
        case Figure(alt, uri):
            return f'<img alt="{esc(alt)}" src="{esc(uri)}">'
        case Table():
            return html_table(block)
        case Cards(label, items):
            if not items:
                return ""
            return f'<h3>{esc(label)}</h3><div class="cards">{"".join(_card_html(it) for it in items)}</div>'


def _card_html(item: dict[str, Any]) -> str:
    esc = html.escape
    imgs = "".join(f'<img alt="{esc(item["key"])}" src="{esc(u)}">' for u in item["images"] if u)
    reason = ""
    if item.get("reason"):
        reason = f'<div class="reason">{esc(item.get("step") or "")}: {esc(item["reason"])}</div>'
        reason += f'<div class="muted">{esc(item.get("detail") or "")}</div>'
    texts = "".join(f"<div>{esc(t)}</div>" for t in item["texts"])
    return f'<div class="card"><b>{esc(item["key"])}</b>{reason}<div>{imgs}</div>{texts}</div>'


# ---- markdown ----------------------------------------------------------------------------------------
def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for sec in sections:
        if sec is not sections[0]:
            lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            lines += block_markdown(block)
    return "\n".join(lines).rstrip() + "\n"


def block_markdown(block: Block) -> list[str]:
    """The block's lines, a blank line after each block that shows (figures show nothing)."""
    match block:
        case Paragraph(text):
            return [text, ""]
        case Figure():
            return []
        case Table():
            return [*markdown_table(block), ""]
        case Cards(label, items):
            if not items:
                return []
            return [*markdown_table(cards_table(label, items)), ""]


def cards_table(label: str, items: list[dict[str, Any]]) -> Table:
    """Previews as a table: key, reason (``step: reason (detail)`` for rejects) and the first texts."""
    rows = []
    for it in items:
        reason = f"{it.get('step') or ''}: {it['reason']} ({it.get('detail') or ''})" if it.get("reason") else ""
        rows.append([it["key"], reason, " / ".join(it["texts"])[:MAX_CARD_TEXT]])
    return Table(label, ["key", "reason", "text"], rows)
