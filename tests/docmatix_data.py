"""PDFA tars for Docmatix generation tests, and scripted model answers with their expected outcomes.

Every document carries a tag (``DOC-<NAME>``) in its text; the scripted server answers a request by the tag it
finds in the prompt, so each document gets the model output the test planted for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.pdfa_data import PdfPage, make_pdf, pdfa_json, text_lines, write_tar


@dataclass
class Doc:
    name: str
    pages: int
    answer: str  # what the scripted model answers for this document
    # expected outcome per filter set: a drop reason, or the kept (question, answer) pairs
    v1: str | list[tuple[str, str]] = field(default_factory=list)
    improved: str | list[tuple[str, str]] = field(default_factory=list)
    v1_discarded: dict[str, int] = field(default_factory=dict)
    improved_discarded: dict[str, int] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"DOC-{self.name.upper()}"


DOCS = [
    Doc(
        "plain",
        2,
        "Q1: What is the report about?\nA1: The yearly budget of the city.\nQ2: Who approved it?\nA2: The council",
        v1=[("What is the report about?", "The yearly budget of the city."), ("Who approved it?", "The council")],
        improved=[("What is the report about?", "The yearly budget of the city."), ("Who approved it?", "The council")],
    ),
    Doc(
        "decimals",
        1,
        "Q1: By how much did costs grow?\nA1: By 3.5 percent.\nQ2: Which costs are meant?\nA2: Fixed costs, e.g. rent.",
        v1="all_pairs_discarded",
        improved=[
            ("By how much did costs grow?", "By 3.5 percent."),
            ("Which costs are meant?", "Fixed costs, e.g. rent."),
        ],
        v1_discarded={"dotted_word": 2},
    ),
    Doc(
        "code",
        1,
        'Q1: What does the config hold?\nA1: {"debug": true}\nQ2: Which list is given?\nA2: [1, 2, 3]\n'
        "Q3: What tag is used?\nA3: The <b> tag.\nQ4: What is the title?\nA4: Annual review",
        v1=[("What is the title?", "Annual review")],
        improved=[("What is the title?", "Annual review")],
        v1_discarded={"curly_braces": 1, "square_brackets": 1, "angle_brackets": 1},
        improved_discarded={"curly_braces": 1, "square_brackets": 1, "angle_brackets": 1},
    ),
    Doc(
        "web",
        1,
        "Q1: Where can the form be found?\nA1: On www.example.org.\nQ2: Which server hosts it?\nA2: 10.0.0.12\n"
        "Q3: What file is attached?\nA3: budget.xlsx",
        v1="all_pairs_discarded",
        improved="all_pairs_discarded",
        v1_discarded={"dotted_word": 2, "ip_address": 1},  # the first matching rule names the discard
        improved_discarded={"url_or_filename": 2, "ip_address": 1},
    ),
    Doc(
        "unanswerable",
        1,
        "Q1: What is this page?\nA1: Unanswerable",
        v1="all_pairs_discarded",
        improved="all_pairs_discarded",
        v1_discarded={"unanswerable": 1},
        improved_discarded={"unanswerable": 1},
    ),
    Doc(
        "malformed", 1, "1. What is it? It is a memo.\n2. Who wrote it? Ann.", v1="no_qa_pairs", improved="no_qa_pairs"
    ),
    Doc(
        "multi",
        3,
        "Q1: How many pages?\nA1: Three.\n\nQ2: What is on page two?\nA2: A table\n\nof numbers.",
        v1=[("How many pages?", "Three.")],
        improved=[("How many pages?", "Three.")],
        v1_discarded={"blank_line": 1},
        improved_discarded={"blank_line": 1},
    ),
    Doc("failing", 1, "", v1="generation_failed:http_500", improved="generation_failed:http_500"),
    Doc("long", 6, "Q1: Too long?\nA1: Yes.", v1="too_many_pages", improved="too_many_pages"),
]


def make_docmatix_tars(root: Path, docs: list[Doc] = DOCS) -> Path:
    """One PDFA tar holding every document (keys 0, 1, ... like PDFA's numeric keys); returns its folder."""
    members: list[tuple[str, bytes]] = []
    for i, doc in enumerate(docs):
        pages = [text_lines(f"{doc.tag} page {p + 1}", 4) for p in range(doc.pages)]
        members.append((f"{i:06d}.json", pdfa_json(pages)))
        members.append((f"{i:06d}.pdf", make_pdf([PdfPage(lines) for lines in pages])))
    folder = root / "pdfa"
    write_tar(folder / "pdfa-eng-train-000000.tar", members)
    return folder


def scripted_answer(prompt_text: str, docs: list[Doc] = DOCS) -> str | tuple[int, str]:
    """The planted model answer of the document whose tag appears in ``prompt_text`` (HTTP 500 for 'failing')."""
    for doc in docs:
        if doc.tag in prompt_text:
            return (500, '{"error": {"message": "boom"}}') if doc.name == "failing" else doc.answer
    raise AssertionError(f"no document tag in the prompt: {prompt_text[:200]!r}")
