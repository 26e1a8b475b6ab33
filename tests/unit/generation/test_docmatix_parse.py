"""Parsing of scripted model outputs: the published Q#/A# regex (its quirks pinned) and the JSON form."""

from __future__ import annotations

import json

import pytest

from curation.generation.docmatix.parse import parse_qa, parse_qa_json

# --- parse_qa: the published regex ---


def test_plain_pairs():
    out = "Q1: What is the title?\nA1: Annual report.\nQ2: Which year?\nA2: 1999."
    assert parse_qa(out) == [("What is the title?", "Annual report."), ("Which year?", "1999.")]


def test_numbering_gaps_and_mismatched_numbers_still_pair():
    assert parse_qa("Q1: a?\nA1: b\nQ3: c?\nA3: d") == [("a?", "b"), ("c?", "d")]
    assert parse_qa("Q1: a?\nA2: b") == [("a?", "b")]


def test_multi_line_answers_run_to_the_next_question():
    out = "Q1: List the items?\nA1: First line.\nSecond line.\n\nThird.\nQ2: x?\nA2: y\n"
    assert parse_qa(out) == [("List the items?", "First line.\nSecond line.\n\nThird."), ("x?", "y")]


def test_text_before_the_first_question_is_ignored():
    out = "Sure! Here are some pairs:\n\nQ1: a?\nA1: b"
    assert parse_qa(out) == [("a?", "b")]


def test_a_trailing_question_without_answer_is_dropped():
    assert parse_qa("Q1: a?\nA1: b\nQ2: c?") == [("a?", "b")]
    assert parse_qa("Q1: only a question?") == []
    assert parse_qa("") == []


def test_a_question_without_answer_in_the_middle_swallows_the_next_question():
    """The lazy question group runs to the first A#: the stray Q2 stays inside (the question_marker filter
    drops it later)."""
    assert parse_qa("Q1: a?\nQ2: b?\nA2: c") == [("a?\nQ2: b?", "c")]


def test_only_the_prefix_with_exactly_one_space_is_removed():
    assert parse_qa("Q1:What?\nA1:Yes") == [("Q1:What?", "A1:Yes")]
    assert parse_qa("Q1:  two spaces?\nA1:\tTab") == [(" two spaces?", "A1:\tTab")]


def test_an_empty_answer_leaves_its_bare_marker():
    assert parse_qa("Q1: a?\nA1:\nQ2: b?\nA2: c") == [("a?", "A1:"), ("b?", "c")]


def test_multi_digit_numbers():
    assert parse_qa("Q10: ten?\nA10: 10\nQ123: many?\nA123: yes") == [("ten?", "10"), ("many?", "yes")]


def test_lower_case_markers_are_not_matched():
    assert parse_qa("q1: a?\na1: b") == []
    assert parse_qa("q1: a?\nA1: b") == []
    assert parse_qa("Q1: a?\na1: b") == []


def test_an_answer_marker_inside_a_question_splits_it_early():
    """Published behaviour: "A1:" in the question text ends the question there."""
    assert parse_qa("Q1: What is in cell A1: the total?\nA1: 5") == [("What is in cell", "the total?\nA1: 5")]


def test_windows_newlines():
    out = "Q1: a?\r\nA1: b\r\nQ2: c?\r\nA2: d\r\n"
    assert parse_qa(out) == [("a?", "b"), ("c?", "d")]


def test_unicode_text_and_digits():
    out = "Q1: Qu'est-ce que « l'Œuvre » ?\nA1: Ça coûte 5 € — 日本語.\nQ٢: arabic-indic digit?\nA٢: matched"
    assert parse_qa(out) == [
        ("Qu'est-ce que « l'Œuvre » ?", "Ça coûte 5 € — 日本語."),
        ("arabic-indic digit?", "matched"),
    ]


# --- parse_qa_json ---

DOC = {"qa": [{"question": "What is the title?", "answer": "Annual report."}, {"question": "Year?", "answer": "1999"}]}
PAIRS = [("What is the title?", "Annual report."), ("Year?", "1999")]


def test_json_plain():
    assert parse_qa_json(json.dumps(DOC)) == PAIRS
    assert parse_qa_json("  \n" + json.dumps(DOC, indent=2) + "\n") == PAIRS


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "```JSON\r\n{}\r\n```",
        "```\n{}\n```",
        "Here is the output:\n```json\n{}\n```\nHope this helps.",
    ],
)
def test_json_in_a_code_fence(wrap):
    assert parse_qa_json(wrap.replace("{}", json.dumps(DOC))) == PAIRS


def test_json_strings_are_cleaned_like_parsed_pairs():
    doc = {"qa": [{"question": "  Q1: a?\n", "answer": "A1: b "}]}
    assert parse_qa_json(json.dumps(doc)) == [("a?", "b")]


def test_json_unicode_and_extra_keys():
    text = '{"qa": [{"question": "caf\\u00e9?", "answer": "日本", "page": 2}], "note": "x"}'
    assert parse_qa_json(text) == [("café?", "日本")]


def test_json_empty_list_is_valid():
    assert parse_qa_json('{"qa": []}') == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Q1: a?\nA1: b",
        '{"qa": [{"question": "a?", "answer": "b"}',  # truncated (max_tokens reached)
        '[{"question": "a?", "answer": "b"}]',
        '{"pairs": []}',
        '{"qa": {"question": "a?", "answer": "b"}}',
        '{"qa": ["a?", "b"]}',
        '{"qa": [{"question": "a?"}]}',
        '{"qa": [{"question": "a?", "answer": 5}]}',
        '{"qa": [{"question": null, "answer": "b"}]}',
        "```json\nnot json\n```",
        "[" * 100_000,
    ],
)
def test_json_of_another_shape_is_none(text):
    assert parse_qa_json(text) is None
