"""Docmatix input side: page texts, the published chunking (overlap quirk included), variant choice, messages."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from curation.generation.docmatix.text import (
    JSON_SCHEMA,
    Chunk,
    build_messages,
    choose_variant,
    chunk_pages,
    page_texts,
)
from curation.recipe.generation import ChunkingConfig, PromptsConfig, PromptVariant
from schemas.records import Page, PageLine, PdfRecord


def words(text: str) -> int:
    return len(text.split())


def pages_of(*token_counts: int) -> list[str]:
    """Page i holds ``token_counts[i]`` words, all spelled ``p<i>`` (so chunk texts show their pages)."""
    return [" ".join([f"p{i}"] * n) for i, n in enumerate(token_counts)]


def cfg(max_tokens: int = 5000, max_pages: int = 5, overlap_pages: int = 1) -> ChunkingConfig:
    return ChunkingConfig(max_tokens=max_tokens, max_pages=max_pages, overlap_pages=overlap_pages)


def spans(chunks: list[Chunk] | None) -> list[tuple[int, ...]]:
    assert chunks is not None
    return [c.pages for c in chunks]


# --- page_texts ---


def line(text: str) -> PageLine:
    return PageLine(text=text, bbox=(0.0, 0.0, 1.0, 0.1))


def test_page_texts_join_lines_in_stored_order_with_the_published_separator():
    record = PdfRecord(
        key="doc",
        source="pdfa",
        pdf=b"%PDF",
        pages=[Page(lines=[line("Title"), line("Body {x}")]), Page(lines=[]), Page(lines=[line("Last")])],
    )
    assert page_texts(record) == ["Title \n Body {x}", "", "Last"]


# --- chunk_pages ---


def test_a_short_document_is_one_chunk_joined_with_new_page():
    pages = ["a b", "c", "d e f"]
    [chunk] = chunk_pages(pages, words, cfg())
    assert chunk == Chunk(text="a b\nNEW PAGE\nc\nNEW PAGE\nd e f", pages=(0, 1, 2), tokens=6)


def test_no_pages_give_no_chunks():
    assert chunk_pages([], words, cfg()) == []


def test_one_page_over_max_tokens_skips_the_whole_document():
    assert chunk_pages(pages_of(2, 11, 1), words, cfg(max_tokens=10)) is None
    assert spans(chunk_pages(pages_of(2, 10, 1), words, cfg(max_tokens=10, overlap_pages=0))) == [(0,), (1,), (2,)]


def test_max_pages_closes_a_chunk_and_the_next_starts_with_the_overlap():
    chunks = chunk_pages(pages_of(*[1] * 12), words, cfg(max_pages=5, overlap_pages=1))
    assert spans(chunks) == [(0, 1, 2, 3, 4), (4, 5, 6, 7, 8), (8, 9, 10, 11)]
    assert chunks[1].text.split("\nNEW PAGE\n") == ["p4", "p5", "p6", "p7", "p8"]


def test_max_tokens_closes_a_chunk_at_equality_it_still_fits():
    assert spans(chunk_pages(pages_of(4, 6, 1), words, cfg(max_tokens=10, overlap_pages=0))) == [(0, 1), (2,)]


def test_without_overlap_chunks_partition_the_pages():
    chunks = chunk_pages(pages_of(3, 3, 3, 3, 3), words, cfg(max_tokens=7, overlap_pages=0))
    assert spans(chunks) == [(0, 1), (2, 3), (4,)]
    assert [c.tokens for c in chunks] == [6, 6, 3]


def test_published_quirk_overlap_can_emit_a_lone_carried_page_and_exceed_max_tokens():
    """[3000, 3000, 3000] with 5000 tokens, overlap 1: the published loop emits [p0], then carries p0 and
    appends p1 without re-checking (6000 tokens), and so on."""
    chunks = chunk_pages(pages_of(3, 3, 3), words, cfg(max_tokens=5, overlap_pages=1))
    assert spans(chunks) == [(0,), (0, 1), (1, 2)]
    assert [c.tokens for c in chunks] == [3, 6, 6]


def test_carried_pages_count_toward_the_next_chunk():
    """overlap 2, 10 tokens: [9, 9, 1, 1, 1] -> each carried pair of pages leaves room for one new page."""
    chunks = chunk_pages(pages_of(9, 9, 1, 1, 1), words, cfg(max_tokens=10, max_pages=5, overlap_pages=2))
    assert spans(chunks) == [(0,), (0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4)]
    assert [c.tokens for c in chunks] == [9, 18, 19, 11, 3]


def reference_spans(counts: list[int], max_tokens: int, max_pages: int, n_overlap: int) -> list[tuple[int, ...]]:
    """The published loop, transcribed on page indices, as an oracle."""
    chunks, current, tokens = [], [], 0
    for i, n in enumerate(counts):
        if n > max_tokens:
            return []
        if tokens + n > max_tokens or len(current) + 1 > max_pages:
            if current:
                chunks.append(tuple(current))
            current = current[-n_overlap:] if n_overlap > 0 else []
            tokens = sum(counts[max(0, i - n_overlap) : i])
        current.append(i)
        tokens += n
    if current:
        chunks.append(tuple(current))
    return chunks


@pytest.mark.parametrize(
    ("counts", "max_tokens", "max_pages", "overlap"),
    [
        ([1] * 9, 100, 3, 1),
        ([1] * 9, 100, 4, 2),
        ([5, 1, 5, 1, 5, 1, 5], 7, 5, 1),
        ([2, 8, 3, 3, 9, 1, 1, 1, 4], 10, 3, 2),
        ([10, 10, 10], 10, 5, 1),
        ([0, 0, 4, 0, 7, 2], 8, 2, 1),
    ],
)
def test_chunking_matches_the_published_loop(counts, max_tokens, max_pages, overlap):
    got = chunk_pages(pages_of(*counts), words, cfg(max_tokens, max_pages, overlap))
    assert spans(got) == reference_spans(counts, max_tokens, max_pages, overlap)


def test_empty_pages_are_kept_as_pages():
    chunks = chunk_pages(["a", "", "b"], words, cfg())
    assert chunks == [Chunk(text="a\nNEW PAGE\n\nNEW PAGE\nb", pages=(0, 1, 2), tokens=2)]


def test_each_page_is_counted_once():
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return 1

    chunk_pages(pages_of(1, 1, 1, 1, 1, 1, 1), counting, cfg(max_pages=2))
    assert len(calls) == 7


# --- choose_variant ---

VARIANTS = [PromptVariant(id=f"v{i}", role=f"role {i}") for i in range(5)]


def test_choose_variant_is_deterministic_and_roughly_uniform():
    keys = [f"doc-{i}" for i in range(5000)]
    first = [choose_variant(k, VARIANTS).id for k in keys]
    assert first == [choose_variant(k, list(VARIANTS)).id for k in keys]
    counts = Counter(first)
    assert set(counts) == {v.id for v in VARIANTS}
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_choose_variant_is_stable_across_processes():
    """blake2b, not hash(): another interpreter with another PYTHONHASHSEED picks the same variants."""
    keys = [f"k{i}" for i in range(50)]
    here = [choose_variant(k, VARIANTS).id for k in keys]
    code = (
        "from curation.generation.docmatix.text import choose_variant\n"
        "from curation.recipe.generation import PromptVariant\n"
        "vs = [PromptVariant(id=f'v{i}', role=f'role {i}') for i in range(5)]\n"
        "print(','.join(choose_variant(f'k{i}', vs).id for i in range(50)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert out.stdout.strip().split(",") == here


def test_choose_variant_known_value():
    """Pinned so that a change of hash or of mapping (which would reshuffle every build) is noticed."""
    digest = int.from_bytes(hashlib.blake2b(b"doc-0", digest_size=8).digest(), "big")
    assert choose_variant("doc-0", VARIANTS) is VARIANTS[digest % 5]


def test_a_single_variant_is_always_chosen():
    assert choose_variant("anything", VARIANTS[:1]) is VARIANTS[0]


# --- build_messages ---


def test_build_messages_fills_the_placeholders_and_leaves_other_braces():
    prompts = PromptsConfig(
        system='You are {role}. Return {"qa": []} if unsure.\nExamples:\n{examples}',
        user="Text:\n{text}\n{unknown}",
        variants=[PromptVariant(id="a", role="an analyst", examples="Q1: {x}?\nA1: [y]")],
    )
    text = "price {total} = {text} <b>"
    messages = build_messages(prompts, prompts.variants[0], text)
    assert messages == (
        ("system", 'You are an analyst. Return {"qa": []} if unsure.\nExamples:\nQ1: {x}?\nA1: [y]'),
        ("user", "Text:\nprice {total} = {text} <b>\n{unknown}"),
    )


def test_build_messages_does_not_substitute_inside_values():
    prompts = PromptsConfig(
        system="{role} | {examples}",
        user="{text}",
        variants=[PromptVariant(id="a", role="uses {examples} literally")],
    )
    assert build_messages(prompts, prompts.variants[0], "t")[0] == ("system", "uses {examples} literally | ")


def test_json_schema_shape():
    assert JSON_SCHEMA["required"] == ["qa"]
    item = JSON_SCHEMA["properties"]["qa"]["items"]
    assert item["required"] == ["question", "answer"]
    assert item["additionalProperties"] is False and JSON_SCHEMA["additionalProperties"] is False
