"""Pair filters: the published docmatix-v1 rules (patterns and order pinned), the improved rules, grounding,
and exact discard counts by rule."""

from __future__ import annotations

from collections import Counter

import pytest

from curation.generation.docmatix.filters import DOCMATIX_V1_RULES, IMPROVED_RULES, FilterResult, apply_filters
from curation.recipe.generation import GroundingConfig

OK_Q = "What is the title?"
OK_A = "The annual report"


def reason(rule_set: str, question: str, answer: str) -> str | None:
    """The discard reason of one pair, or None when it is kept."""
    result = apply_filters([(question, answer)], rule_set)
    assert sum(result.discarded.values()) + len(result.kept) == 1
    return next(iter(result.discarded), None)


def test_v1_rules_are_the_published_patterns_in_the_published_order():
    assert [(name, p.pattern) for name, p in DOCMATIX_V1_RULES] == [
        ("curly_braces", r"\{.*?\}"),
        ("square_brackets", r"\[.*?\]"),
        ("angle_brackets", r"<.*?>"),
        ("ip_address", r"\b\d{1,3}(\.\d{1,3}){3}\b"),
        ("dotted_word", r"\w+\.\w+"),
        ("blank_line", r"\n\s*\n"),
        ("unanswerable", r"unanswerable"),
        ("question_marker", r"Q\d+: "),
        ("answer_marker", r"A\d+: "),
    ]
    assert all(p.flags & 2 for _, p in DOCMATIX_V1_RULES)  # re.IGNORECASE


def test_improved_rules_replace_only_dotted_word():
    v1 = [name for name, _ in DOCMATIX_V1_RULES]
    improved = [name for name, _ in IMPROVED_RULES]
    assert improved == [("url_or_filename" if n == "dotted_word" else n) for n in v1]
    assert dict(IMPROVED_RULES)["ip_address"] is dict(DOCMATIX_V1_RULES)["ip_address"]


# Every v1 rule: a text it discards, and a near miss it keeps (on its own, all other rules silent).
V1_CASES = [
    ("curly_braces", 'Use {"a": 1}', "a } then {"),
    ("curly_braces", "{}", "{ on one line\n} on the next"),  # no DOTALL
    ("square_brackets", "See [12]", "a ] then ["),
    ("angle_brackets", "<b>Bold</b>", "3 < 5"),
    ("angle_brackets", "if 3 < 5 and 6 > 4", "6 > 4"),  # published over-filter
    ("ip_address", "Server 192.168.0.1 is down", "Server one is down"),
    ("dotted_word", "3.5", "3,5"),  # the known over-filter: decimals ...
    ("dotted_word", "e.g. this", "e. g. this"),  # ... and abbreviations
    ("dotted_word", "1234.1.1.1", "1234"),  # not an IP address (4 digits), still a dotted word
    ("dotted_word", "It was done.Next", "It was done. Next"),
    ("dotted_word", "example.com", "example com"),
    ("blank_line", "One\n\nTwo", "One\nTwo"),
    ("blank_line", "One\n  \t\nTwo", "One\n Two"),
    ("unanswerable", "UnAnswerable", "not answerable"),
    ("question_marker", "See Q2: more", "See Q2:more"),
    ("question_marker", "see q12: more", "Q: more"),  # IGNORECASE
    ("answer_marker", "Yes. A3: no", "Yes. A3:no"),
    ("answer_marker", "yes a3: no", "A: no"),
]


@pytest.mark.parametrize(("rule", "positive", "negative"), V1_CASES)
def test_v1_rule_positive_and_negative(rule, positive, negative):
    assert reason("docmatix-v1", OK_Q, positive) == rule
    assert reason("docmatix-v1", positive, OK_A) == rule  # the question is checked too
    assert reason("docmatix-v1", OK_Q, negative) is None
    assert reason("docmatix-v1", negative, OK_A) is None


def test_v1_an_ip_address_is_named_ip_address_because_it_comes_before_dotted_word():
    assert reason("docmatix-v1", OK_Q, "192.168.0.1") == "ip_address"
    assert reason("improved", OK_Q, "192.168.0.1") == "ip_address"


def test_the_first_rule_in_list_order_names_the_discard_whichever_text_matched():
    assert reason("docmatix-v1", "Is it unanswerable?", "{x}") == "curly_braces"
    assert reason("docmatix-v1", "{x}?", "unanswerable") == "curly_braces"
    assert reason("docmatix-v1", OK_Q, "unanswerable {x}") == "curly_braces"
    assert reason("improved", OK_Q, "see {x} at example.com") == "curly_braces"


@pytest.mark.parametrize("rule_set", ["docmatix-v1", "improved"])
@pytest.mark.parametrize(("question", "answer"), [("", OK_A), (OK_Q, ""), (" \n\t", OK_A), (OK_Q, "  "), ("", "")])
def test_empty_is_checked_first(rule_set, question, answer):
    assert reason(rule_set, question, answer) == "empty"
    assert reason(rule_set, "", "unanswerable {x}") == "empty"


IMPROVED_KEEPS = [
    "3.5",
    "$1,234.56",
    "v2.0",
    "Python 3.11",
    "Section 4.2.1",
    "e.g. the fees",
    "i.e. none",
    "The U.S. and the U.S.A.",
    "Dr. Smith",
    "Mr.Jones",
    "No. 5",
    "etc.",
    "J.R.R. Tolkien",
    "a.m. and p.m.",
    "Ph.D.",
    "Fig.3",
    "Node.js",
    "It was done.Next step",  # a missing space after a full stop: a typo, kept
    "It ended.It was late",  # .it is a TLD but also a word: not in the TLD list
    "the .pdf format",  # a format named, not a file
]


@pytest.mark.parametrize("text", IMPROVED_KEEPS)
def test_improved_keeps_decimals_abbreviations_initials_and_typos(text):
    assert reason("improved", OK_Q, text) is None
    assert reason("improved", text, OK_A) is None


IMPROVED_URLS = [
    "https://example.org/report",
    "See www.example",
    "Visit example.com",
    "UNICEF.ORG",
    "sub.domain.co.uk",
    "acme.com/path",
    "example.ai/path?q=1",
    "mail john.doe@acme.co.uk",
    "Write to a@b.c",
    "report.pdf",
    "Annual Report 2020.PDF",
    "budget_2020.xlsx",
    "letter.docx",
    "image.png",
    "photo.jpg",
    "index.html",
    "login.php",
    "setup.exe",
    "archive.zip",
    "table.csv",
    "notes.txt",
    "config.json",
    "feed.xml",
    "file-name_v2.tar.gz",
]


@pytest.mark.parametrize("text", IMPROVED_URLS)
def test_improved_discards_urls_emails_and_file_names(text):
    assert reason("improved", OK_Q, text) == "url_or_filename"
    assert reason("improved", text, OK_A) == "url_or_filename"
    assert reason("docmatix-v1", OK_Q, text) == "dotted_word"


def test_improved_catches_a_dotless_url_that_v1_missed():
    assert reason("improved", OK_Q, "http://intranet/wiki") == "url_or_filename"
    assert reason("docmatix-v1", OK_Q, "http://intranet/wiki") is None


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ('{"key": "value"}', "curly_braces"),
        ("print(x[0])", "square_brackets"),
        ("<div class=x>", "angle_brackets"),
        ("10.0.0.1", "ip_address"),
        ("One\n\nTwo", "blank_line"),
        ("Unanswerable", "unanswerable"),
        ("UNANSWERABLE from the text", "unanswerable"),
        ("this is unanswerable.", "unanswerable"),
        ("yes\nQ3: and then?", "question_marker"),
        ("yes A4: no", "answer_marker"),
    ],
)
def test_improved_still_discards_code_and_markers(text, rule):
    assert reason("improved", OK_Q, text) == rule


# --- grounding ---

SOURCE = (
    "ANNUAL REPORT 1999 \n The quarterly revenue grew by 12 percent, driven by exports \n to Canada and Mexico."
    "\nNEW PAGE\nThe board approved a dividend of 0.45 dollars per share."
)
GROUNDING = GroundingConfig(min_score=80.0, min_answer_chars=4)


def grounded(answer: str, grounding: GroundingConfig = GROUNDING) -> FilterResult:
    return apply_filters([(OK_Q, answer)], "improved", source_text=SOURCE, grounding=grounding)


def test_grounding_keeps_copied_answers_with_small_typos_case_and_spacing():
    for answer in (
        "The quarterly revenue grew by 12 percent",
        "quartely revenu grew by 12 precent",
        "exports  to CANADA\nand mexico",
        "Annual Report 1999",
    ):
        assert grounded(answer).kept == [(OK_Q, answer)], answer


def test_grounding_discards_an_invented_answer():
    result = grounded("The company was founded in Paris by three engineers")
    assert result.kept == [] and result.discarded == Counter({"not_grounded": 1})


def test_short_answers_are_not_checked():
    assert grounded("Yes").kept == [(OK_Q, "Yes")]
    assert grounded("Nope").discarded == Counter({"not_grounded": 1})
    assert grounded("Nope", GroundingConfig(min_answer_chars=5)).kept == [(OK_Q, "Nope")]


def test_rules_come_before_grounding_and_no_grounding_without_config():
    assert grounded("unanswerable").discarded == Counter({"unanswerable": 1})
    invented = [(OK_Q, "The company was founded in Paris")]
    assert apply_filters(invented, "improved", source_text=SOURCE).kept == invented


def test_grounding_needs_the_source_text():
    with pytest.raises(ValueError, match="source text"):
        apply_filters([(OK_Q, OK_A)], "improved", grounding=GROUNDING)


# --- a mixed batch ---

# (question, answer, v1 reason, improved reason); None = kept.
BATCH = [
    ("What is the total?", "$1,234.56", "dotted_word", None),
    ("Which version?", "v2.0", "dotted_word", None),
    ("What does it say, e.g. about costs?", "It lists fees.", "dotted_word", None),
    ("Who wrote it?", "J.R.R. Tolkien", "dotted_word", None),
    ("Where is the report?", "At https://example.org/report", "dotted_word", "url_or_filename"),
    ("Contact?", "info@acme.com", "dotted_word", "url_or_filename"),
    ("Which file?", "budget_2020.xlsx", "dotted_word", "url_or_filename"),
    ("Server?", "192.168.0.1", "ip_address", "ip_address"),
    ("What is the code?", '{"a": 1}', "curly_braces", "curly_braces"),
    ("Which reference?", "[12]", "square_brackets", "square_brackets"),
    ("Markup?", "<b>Bold</b>", "angle_brackets", "angle_brackets"),
    ("", "Something", "empty", "empty"),
    ("What?", "   ", "empty", "empty"),
    ("Is there a date?", "Unanswerable", "unanswerable", "unanswerable"),
    ("What colour?", "UNANSWERABLE from the text", "unanswerable", "unanswerable"),
    ("List?", "One\n\nTwo", "blank_line", "blank_line"),
    ("a?\nQ2: b?", "c", "question_marker", "question_marker"),
    ("First?", "Yes. A2: no", "answer_marker", "answer_marker"),
    ("Who signed?", "The mayor", None, None),
    ("When?", "In 1999", None, None),
    ("How many pages?", "Four", None, None),
    ("Country?", "The U.S.", "dotted_word", None),
    ("Title?", "Dr. Smith", None, None),
    ("Rate?", "3.5 percent", "dotted_word", None),
    ("Site?", "www.example.net", "dotted_word", "url_or_filename"),
    ("Mixed?", "see {x} at example.com", "curly_braces", "curly_braces"),
    ("Typo?", "It was done.Next step", "dotted_word", None),
    ("Q?", "unanswerable {x}", "curly_braces", "curly_braces"),
    ("Hosts?", "10.0.0.1 or host.com", "ip_address", "ip_address"),
    ("Rank?", "No. 5 on the list", None, None),
]


@pytest.mark.parametrize(("rule_set", "column"), [("docmatix-v1", 2), ("improved", 3)])
def test_mixed_batch_discard_counts_are_exact(rule_set, column):
    assert len(BATCH) == 30
    result = apply_filters([(q, a) for q, a, *_ in BATCH], rule_set)
    expected_kept = [(row[0], row[1]) for row in BATCH if row[column] is None]
    assert result.kept == expected_kept  # in input order
    assert result.discarded == Counter(row[column] for row in BATCH if row[column] is not None)
    if rule_set == "docmatix-v1":
        assert len(result.kept) == 5
        assert result.discarded == Counter(
            dotted_word=11,
            curly_braces=3,
            ip_address=2,
            empty=2,
            unanswerable=2,
            square_brackets=1,
            angle_brackets=1,
            blank_line=1,
            question_marker=1,
            answer_marker=1,
        )
    else:
        assert len(result.kept) == 12
        assert result.discarded == Counter(
            url_or_filename=4,
            curly_braces=3,
            ip_address=2,
            empty=2,
            unanswerable=2,
            square_brackets=1,
            angle_brackets=1,
            blank_line=1,
            question_marker=1,
            answer_marker=1,
        )


def test_unknown_rule_set_is_a_key_error():
    with pytest.raises(KeyError):
        apply_filters([], "docmatix-v2")  # type: ignore[arg-type]


def test_improved_catches_the_bare_marker_an_empty_answer_leaves():
    """The published parser turns an empty answer into "A1:"; v1 keeps that pair, improved discards it."""
    pairs = [("What is it?", "A1:"), ("Q2:", "An answer")]
    assert apply_filters(pairs, "docmatix-v1").kept == pairs
    result = apply_filters(pairs, "improved")
    assert result.kept == [] and dict(result.discarded) == {"answer_marker": 1, "question_marker": 1}
