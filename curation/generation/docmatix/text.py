"""PDF text -> chunks -> chat messages: the input side of Docmatix generation (as the Docmatix
dataset was generated: docs/docmatix.md).

Page and chunk separators and the chunking rule follow the published generation script, quirks included, so
that a recipe with the Docmatix settings sends the model the same texts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from curation.recipe.generation import ChunkingConfig, PromptsConfig, PromptVariant
from schemas.records import PdfRecord

LINE_SEPARATOR = " \n "
PAGE_SEPARATOR = "\nNEW PAGE\n"

JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "qa": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["qa"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Chunk:
    """Consecutive pages sent to the model in one prompt.

    ``tokens`` is the sum of the token counts of ``pages``; it can exceed ``max_tokens`` after an overlap
    (the published rule does not re-check the carried pages).
    """

    text: str
    pages: tuple[int, ...]
    tokens: int


def page_texts(record: PdfRecord) -> list[str]:
    """One text per page: its OCR lines, in the record's order, joined with ``' \\n '`` (the ``pdfa`` reader
    stores reading order, or the JSON's order with ``mode: original``)."""
    return [LINE_SEPARATOR.join(line.text for line in page.lines) for page in record.pages]


def chunk_pages(pages: list[str], count_tokens: Callable[[str], int], cfg: ChunkingConfig) -> list[Chunk] | None:
    """Group pages into chunks; None when one page alone exceeds ``cfg.max_tokens`` (the document is skipped).

    A chunk is closed when the next page would take it over ``max_tokens`` or ``max_pages``; the next chunk
    starts with the last ``overlap_pages`` pages of the closed one, their tokens counted as those of the
    ``overlap_pages`` pages just before the current one (the published formula), and the next page is added
    without checking that the carried pages left room for it: a chunk can exceed ``max_tokens``, and a chunk can
    be contained in the next one (``[p0]``, ``[p0, p1]``) (published behaviour, kept). Empty pages are pages
    like any other.
    """
    counts = [count_tokens(page) for page in pages]
    if any(n > cfg.max_tokens for n in counts):
        return None
    overlap = cfg.overlap_pages
    groups: list[list[int]] = []
    current: list[int] = []
    current_tokens = 0
    for i, n in enumerate(counts):
        if current_tokens + n > cfg.max_tokens or len(current) + 1 > cfg.max_pages:
            if current:
                groups.append(current)
            current = current[-overlap:] if overlap > 0 else []
            current_tokens = sum(counts[max(0, i - overlap) : i])
        current.append(i)
        current_tokens += n
    if current:
        groups.append(current)
    return [
        Chunk(text=PAGE_SEPARATOR.join(pages[i] for i in g), pages=tuple(g), tokens=sum(counts[i] for i in g))
        for g in groups
    ]


def choose_variant(key: str, variants: Sequence[PromptVariant]) -> PromptVariant:
    """The prompt variant of a document: a hash of its key (blake2b, not ``hash()``, so it is the same in
    every process and Python version), spread uniformly over the variants."""
    if not variants:
        raise ValueError("no prompt variants to choose from")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return variants[int.from_bytes(digest, "big") % len(variants)]


_SYSTEM_PLACEHOLDERS = re.compile(r"\{(role|examples)\}")
_USER_PLACEHOLDERS = re.compile(r"\{(text)\}")


def _fill(pattern: re.Pattern[str], template: str, values: dict[str, str]) -> str:
    """Replace the named placeholders in one pass: other braces stay as they are, and a value that itself
    holds ``{examples}`` or ``{text}`` is not substituted again."""
    return pattern.sub(lambda m: values[m.group(1)], template)


def build_messages(prompts: PromptsConfig, variant: PromptVariant, text: str) -> tuple[tuple[str, str], ...]:
    """(role, content) messages: the system prompt with the variant's role and examples, the user prompt
    with the chunk text."""
    system = _fill(_SYSTEM_PLACEHOLDERS, prompts.system, {"role": variant.role, "examples": variant.examples})
    user = _fill(_USER_PLACEHOLDERS, prompts.user, {"text": text})
    return (("system", system), ("user", user))
