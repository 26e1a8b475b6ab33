"""OBELICS documents and filters: every signal on hand-computed strings, every threshold at
just below / at / just above, paragraph and document drops with their reasons, image rules,
real-layout parquet rows (malformed ones too), END_OF_DOCUMENT cleanup, URL counting with DuckDB,
and the word lists as package data."""

from __future__ import annotations

import itertools
import json
import string
import tomllib
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from curation.sources.obelics import (
    END_OF_DOCUMENT,
    DocumentFilterConfig,
    ImageFilterConfig,
    ObelicsDocument,
    ObelicsFilterConfig,
    ParagraphFilterConfig,
    TextScorer,
    WordLists,
    char_repetition_ratio,
    check_document,
    check_image,
    check_paragraph,
    clean_document,
    common_words_ratio,
    count_image_urls,
    filter_paragraphs,
    flagged_words_ratio,
    load_wordlist,
    overused_urls,
    punctuation_ratio,
    spam_words_ratio,
    special_characters_ratio,
    split_words,
    stopwords_ratio,
    strip_end_of_document,
    strip_end_of_document_text,
    text_signals,
    word_count,
    word_repetition_ratio,
)
from curation.sources.obelics.signals import is_special_character, punctuation_tokens

ROOT = Path(__file__).parents[3]

# Paragraphs of everyday English that pass every default paragraph rule; together they pass the
# document rules too (checked below, so the fixtures cannot silently rot).
GOOD = [
    "The new library opened last week in the center of the town. Many people came to see the building, "
    "and the children spent hours in the reading room.",
    "The city council said that the project cost more than they expected, but most families think it "
    "was worth the money.",
    "Next year the library will also offer music classes for young students and their parents.",
]
GOOD_TEXT = "\n\n".join(GOOD)
# Passes every paragraph rule before spam; spam words click, share, subscribe: 3/22 >= 0.12.
SPAM_PARAGRAPH = (
    "Please click here to share this story with your friends, and do not forget to subscribe for more news "
    "about the city."
)
STOP, COMMON, RARE, SPAM, FLAGGED = "the", "house", "zyxt", "subscribe", "porn"


def meta(w=300, h=200, fmt="jpg", **extra) -> dict:
    m = {"document_url": "https://example.com/page", "unformatted_src": "a.jpg", "src": "https://example.com/a.jpg"}
    m.update({"original_width": w, "original_height": h, "format": fmt}, **extra)
    return {k: v for k, v in m.items() if v is not None}


def doc_of(*items, general=None) -> ObelicsDocument:
    """Items: a str is a text, a (url, meta) tuple an image."""
    texts, images, metadata = [], [], []
    for item in items:
        if isinstance(item, str):
            texts.append(item), images.append(None), metadata.append(None)
        else:
            texts.append(None), images.append(item[0]), metadata.append(item[1])
    return ObelicsDocument(texts, images, metadata, general or {"url": "https://example.com/page"})


def img(i=0, **kw) -> tuple[str, dict]:
    return (f"https://example.com/img{i}.jpg", meta(**kw))


def unique_words(m: int) -> list[str]:
    """``m`` distinct letter-only words, none in any word list."""
    words = ("q" + "".join(p) for p in itertools.product(string.ascii_lowercase, repeat=3))
    return list(itertools.islice(words, m))


def mix(k: int, word: str, n: int, filler: str = COMMON) -> str:
    """``n`` words of which the first ``k`` are ``word`` and the rest ``filler``."""
    return " ".join([word] * k + [filler] * (n - k))


PARA_RULES = (
    "min_words",
    "max_words",
    "max_char_repetition",
    "max_word_repetition",
    "max_special_characters",
    "min_stopwords",
    "max_flagged_words",
    "min_punctuation",
    "min_common_words",
    "spam_words_drop_at",
)
DOC_RULES = tuple(r for r in PARA_RULES if r != "spam_words_drop_at")


def para_only(*rules: str, **overrides) -> ParagraphFilterConfig:
    """The default paragraph config with every text rule disabled except ``rules``."""
    return ParagraphFilterConfig(
        **{r: getattr(ParagraphFilterConfig(), r) for r in PARA_RULES if r in rules}
        | {r: None for r in PARA_RULES if r not in rules}
        | overrides
    )


def doc_only(*rules: str, **overrides) -> DocumentFilterConfig:
    return DocumentFilterConfig(**{r: None for r in DOC_RULES if r not in rules} | overrides)


# --------------------------------------------------------------------------------------------------
# Words and special characters


def test_split_words_lowercases_splits_on_whitespace_and_strips_special_characters_at_the_ends():
    text = "Hello, World!  42 don't --- «Ünïcode» 😀smile😀 e-mail U.S. $5 (x)"
    assert split_words(text) == ["hello", "world", "don't", "ünïcode", "smile", "e-mail", "u.s", "x"]
    assert split_words("a\tb\nc\u00a0d\u2003e\r\nf") == ["a", "b", "c", "d", "e", "f"]
    assert split_words("") == [] and split_words(" \n\n ... 2023 ") == []
    assert word_count("The cat, the hat; 10 dogs.") == 5


@pytest.mark.parametrize(
    "ch",
    [
        *"!,.;:?'\"-_/@#%&*()[]",
        "0",
        "7",
        " ",
        "\t",
        "\n",
        "\u00a0",
        "\u2003",
        "©",
        "™",
        "€",
        "£",
        "½",
        "²",
        "—",
        "–",
        "«",
        "»",
        "•",
        "→",
        "😀",
        "\u200d",
        "\ufe0f",
        "\u20e3",
    ],
)
def test_special_characters(ch):
    assert is_special_character(ch)


@pytest.mark.parametrize("ch", ["a", "Z", "é", "ß", "ñ", "中", "я", "ا"])
def test_letters_are_not_special(ch):
    assert not is_special_character(ch)


# --------------------------------------------------------------------------------------------------
# Signals, hand-computed


def test_char_repetition_ratio_hand_computed():
    # 20 characters: 11 ten-grams, 10 distinct, "0123456789" twice: k = min(isqrt(10)=3, 1) = 1.
    assert char_repetition_ratio("0123456789" * 2) == 2 / 11
    assert char_repetition_ratio("a" * 12) == 1.0  # 3 ten-grams, all the same
    assert char_repetition_ratio("abcdefghijklmnop") == 0.0  # no repeated ten-gram
    assert char_repetition_ratio("short") == 0.0  # fewer than 10 characters
    assert char_repetition_ratio("") == 0.0
    # The sqrt cap: n=1, "aabbcc" has D=3 distinct, all repeated; k = min(isqrt(3)=1, 3) = 1 -> 2/6.
    assert char_repetition_ratio("aabbcc", n=1) == 2 / 6
    # "aabbccd": D=4, R=3, k = min(2, 3) = 2 -> (2 + 2) / 7.
    assert char_repetition_ratio("aabbccd", n=1) == 4 / 7
    # Raw text, no normalization: case matters.
    assert char_repetition_ratio("ABCDEFGHIJabcdefghij") == 0.0


def test_word_repetition_ratio_hand_computed():
    assert word_repetition_ratio("a b c d e a") == 0.0  # two different 5-grams
    assert word_repetition_ratio("a b c d e a b c d e") == 2 / 6  # "a b c d e" twice among six
    assert word_repetition_ratio("A b, c d E. a B c D e!") == 2 / 6  # on split_words: case and edges normalized
    assert word_repetition_ratio("a b c d") == 0.0  # fewer than n words
    assert word_repetition_ratio("x x x x x x x", n=5) == 1.0
    assert word_repetition_ratio("a b a b a c", n=2) == 4 / 5  # "a b" x2, "b a" x2, "a c" x1


def test_special_characters_ratio_hand_computed():
    assert special_characters_ratio("ab, cd!") == 3 / 7  # ",", " ", "!"
    assert special_characters_ratio("a1b2") == 0.5
    assert special_characters_ratio("😀ab") == 1 / 3
    assert special_characters_ratio("") == 0.0
    assert special_characters_ratio("abc") == 0.0


def test_word_list_ratios_hand_computed():
    assert stopwords_ratio("The cat and THE dog") == 3 / 5
    assert stopwords_ratio("The cat", stopwords={"cat"}) == 1 / 2
    assert stopwords_ratio("") == 0.0 and stopwords_ratio("42 !!") == 0.0
    assert flagged_words_ratio(f"a {FLAGGED} site about houses") == 1 / 5
    assert common_words_ratio(f"the house {RARE} qwrtz") == 2 / 4
    assert spam_words_ratio("Click here to SUBSCRIBE!") == 2 / 4
    assert spam_words_ratio("click", spam_words=frozenset()) == 0.0


def test_punctuation_ratio_hand_computed():
    assert punctuation_tokens("Hello, world.") == ["Hello", ",", "world", "."]
    assert punctuation_ratio("Hello, world.") == 2 / 4
    assert punctuation_ratio("Wait... what?!") == 5 / 7
    assert punctuation_ratio("state-of-the-art") == 0.0  # tokens state of the art; "-" is not a mark
    assert punctuation_ratio("it's 2 o'clock") == 0.0
    assert punctuation_ratio("") == 0.0 and punctuation_ratio("— —") == 0.0


def test_text_signals_agrees_with_the_single_functions():
    s = text_signals(GOOD_TEXT)
    assert s["words"] == word_count(GOOD_TEXT)
    assert s["char_repetition"] == char_repetition_ratio(GOOD_TEXT)
    assert s["word_repetition"] == word_repetition_ratio(GOOD_TEXT)
    assert s["special_characters"] == special_characters_ratio(GOOD_TEXT)
    assert s["stopwords"] == stopwords_ratio(GOOD_TEXT)
    assert s["common_words"] == common_words_ratio(GOOD_TEXT)
    assert s["punctuation"] == punctuation_ratio(GOOD_TEXT)
    assert s["spam_words"] == spam_words_ratio(GOOD_TEXT) == 0.0


# --------------------------------------------------------------------------------------------------
# Thresholds: just below / at / just above, paragraph and document level


def char_rep_text(m: int) -> str:
    """A repeated 10-gram around ``m`` unique characters: ratio 2 / (11 + m)."""
    text = "ABCDEFGHIJ" + "klmnopqrstuvwxyz"[:m] + "ABCDEFGHIJ"
    assert char_repetition_ratio(text) == 2 / (11 + m)
    return text


def word_rep_text(m: int) -> str:
    """A repeated 5-gram around ``m`` unique words: ratio 2 / (6 + m)."""
    base = ["alpha", "bravo", "charlie", "delta", "echo"]
    text = " ".join(base + unique_words(m) + base)
    assert word_repetition_ratio(text) == 2 / (6 + m)
    return text


def punct_text(words: int, marks: int) -> str:
    """``words`` words, the first ``marks`` of them followed by a period."""
    return " ".join(COMMON + ("." if i < marks else "") for i in range(words))


# (rules enabled, text, expected reason suffix or None). The threshold in the comment.
PARAGRAPH_BOUNDARIES = [
    # words 4 - 1,000
    (("min_words",), mix(0, STOP, 3), "too_few_words"),
    (("min_words",), mix(0, STOP, 4), None),
    (("min_words",), mix(0, STOP, 5), None),
    (("max_words",), mix(0, STOP, 999), None),
    (("max_words",), mix(0, STOP, 1000), None),
    (("max_words",), mix(0, STOP, 1001), "too_many_words"),
    # char repetition <= 0.1: 2/21, 2/20, 2/19
    (("max_char_repetition",), char_rep_text(10), None),
    (("max_char_repetition",), char_rep_text(9), None),
    (("max_char_repetition",), char_rep_text(8), "char_repetition"),
    # word repetition <= 0.1: 2/21, 2/20, 2/19
    (("max_word_repetition",), word_rep_text(15), None),
    (("max_word_repetition",), word_rep_text(14), None),
    (("max_word_repetition",), word_rep_text(13), "word_repetition"),
    # special characters <= 0.3
    (("max_special_characters",), "a" * 71 + "!" * 29, None),
    (("max_special_characters",), "a" * 70 + "!" * 30, None),
    (("max_special_characters",), "a" * 69 + "!" * 31, "special_characters"),
    # stopwords >= 0.3
    (("min_stopwords",), mix(29, STOP, 100), "stopwords"),
    (("min_stopwords",), mix(30, STOP, 100), None),
    (("min_stopwords",), mix(31, STOP, 100), None),
    # flagged words <= 0.01: 1/101, 1/100, 2/100
    (("max_flagged_words",), mix(1, FLAGGED, 101), None),
    (("max_flagged_words",), mix(1, FLAGGED, 100), None),
    (("max_flagged_words",), mix(2, FLAGGED, 100), "flagged_words"),
    # punctuation >= 0.001: 1/1001, 1/1000, 2/1000 tokens
    (("min_punctuation",), punct_text(1000, 1), "punctuation"),
    (("min_punctuation",), punct_text(999, 1), None),
    (("min_punctuation",), punct_text(998, 2), None),
    # ... only at >= 12 tokens
    (("min_punctuation",), punct_text(11, 0), None),
    (("min_punctuation",), punct_text(12, 0), "punctuation"),
    (("min_punctuation",), punct_text(11, 1), None),  # 12 tokens, ratio 1/12
    # common words >= 0.8
    (("min_common_words",), mix(79, COMMON, 100, RARE), "common_words"),
    (("min_common_words",), mix(80, COMMON, 100, RARE), None),
    (("min_common_words",), mix(81, COMMON, 100, RARE), None),
    # spam: dropped at ratio >= 0.12
    (("spam_words_drop_at",), mix(11, SPAM, 100), None),
    (("spam_words_drop_at",), mix(12, SPAM, 100), "spam"),
    (("spam_words_drop_at",), mix(13, SPAM, 100), "spam"),
]


@pytest.mark.parametrize(("rules", "text", "expected"), PARAGRAPH_BOUNDARIES)
def test_paragraph_threshold_boundaries(rules, text, expected):
    assert check_paragraph(text, para_only(*rules)) == (None if expected is None else f"paragraph_{expected}")


DOCUMENT_BOUNDARIES = [
    # words 10 - 2,000
    (("min_words",), mix(0, STOP, 9), "too_few_words"),
    (("min_words",), mix(0, STOP, 10), None),
    (("min_words",), mix(0, STOP, 11), None),
    (("max_words",), mix(0, STOP, 1999), None),
    (("max_words",), mix(0, STOP, 2000), None),
    (("max_words",), mix(0, STOP, 2001), "too_many_words"),
    # char repetition <= 0.1
    (("max_char_repetition",), char_rep_text(10), None),
    (("max_char_repetition",), char_rep_text(9), None),
    (("max_char_repetition",), char_rep_text(8), "char_repetition"),
    # word repetition <= 0.2: 2/11, 2/10, 2/9
    (("max_word_repetition",), word_rep_text(5), None),
    (("max_word_repetition",), word_rep_text(4), None),
    (("max_word_repetition",), word_rep_text(3), "word_repetition"),
    # special characters <= 0.275: 109/400, 110/400, 111/400
    (("max_special_characters",), "a" * 291 + "!" * 109, None),
    (("max_special_characters",), "a" * 290 + "!" * 110, None),
    (("max_special_characters",), "a" * 289 + "!" * 111, "special_characters"),
    # stopwords >= 0.35
    (("min_stopwords",), mix(34, STOP, 100), "stopwords"),
    (("min_stopwords",), mix(35, STOP, 100), None),
    (("min_stopwords",), mix(36, STOP, 100), None),
    # flagged words <= 0.01
    (("max_flagged_words",), mix(1, FLAGGED, 101), None),
    (("max_flagged_words",), mix(1, FLAGGED, 100), None),
    (("max_flagged_words",), mix(2, FLAGGED, 100), "flagged_words"),
    # punctuation >= 0.03, no minimum length: 3/101, 3/100, 4/100 tokens
    (("min_punctuation",), punct_text(98, 3), "punctuation"),
    (("min_punctuation",), punct_text(97, 3), None),
    (("min_punctuation",), punct_text(96, 4), None),
    (("min_punctuation",), punct_text(5, 0), "punctuation"),
    # common words >= 0.9
    (("min_common_words",), mix(89, COMMON, 100, RARE), "common_words"),
    (("min_common_words",), mix(90, COMMON, 100, RARE), None),
    (("min_common_words",), mix(91, COMMON, 100, RARE), None),
]


@pytest.mark.parametrize(("rules", "text", "expected"), DOCUMENT_BOUNDARIES)
def test_document_threshold_boundaries(rules, text, expected):
    doc = doc_of(text, img())
    assert check_document(doc, doc_only(*rules)) == (None if expected is None else f"doc_{expected}")


def test_document_rules_score_all_texts_joined():
    # Each text alone is under 10 words; together they are 12.
    cfg = doc_only("min_words")
    assert check_document(doc_of(mix(0, STOP, 6), img(), mix(0, STOP, 6)), cfg) is None
    assert check_document(doc_of(mix(0, STOP, 6), img()), cfg) == "doc_too_few_words"
    assert check_document(doc_of(img()), cfg) == "doc_too_few_words"


def test_punctuation_gate_can_be_removed_and_set_at_document_level():
    assert check_paragraph(punct_text(11, 0), para_only("min_punctuation", punctuation_min_tokens=None)) == (
        "paragraph_punctuation"
    )
    cfg = doc_only("min_punctuation", punctuation_min_tokens=12)
    assert check_document(doc_of(punct_text(11, 0), img()), cfg) is None


def test_fixtures_pass_every_default_rule():
    for paragraph in GOOD:
        assert check_paragraph(paragraph) is None, paragraph
    assert check_document(doc_of(GOOD_TEXT, img())) is None


def test_first_failing_rule_is_reported_in_order():
    # Too few words and no stopwords and rare words: the word count is checked first.
    assert check_paragraph(f"{RARE} {RARE}") == "paragraph_too_few_words"
    assert check_paragraph(mix(0, RARE, 20)) == "paragraph_char_repetition"  # before word repetition
    assert check_paragraph(" ".join(unique_words(20))) == "paragraph_stopwords"  # before common words
    assert check_document(doc_of(f"{RARE} {RARE}", img())) == "doc_too_few_words"


def test_disabled_rules_never_fire():
    off = ParagraphFilterConfig(**{r: None for r in PARA_RULES})
    for text in ("", "x", mix(0, RARE, 20), "!!!!!!!!", mix(50, SPAM, 50)):
        assert check_paragraph(text, off) is None
    assert check_document(doc_of("x", img()), DocumentFilterConfig(**{r: None for r in DOC_RULES})) is None


# --------------------------------------------------------------------------------------------------
# Model hooks (language id, perplexity): off by default


def test_model_hooks_are_off_by_default():
    for cfg in (ParagraphFilterConfig(), DocumentFilterConfig()):
        assert cfg.lang_id_scorer is None and cfg.perplexity_scorer is None
        assert cfg.min_lang_id == 0.8 and cfg.max_perplexity == 1500


def test_lang_id_hook_boundaries_and_input():
    seen: list[str] = []

    def scorer(score):
        def score_text(text: str) -> float:
            seen.append(text)
            return score

        return score_text

    assert isinstance(scorer(1.0), TextScorer)
    doc = doc_of(GOOD_TEXT, img())
    assert check_document(doc, DocumentFilterConfig(lang_id_scorer=scorer(0.79))) == "doc_lang_id"
    assert check_document(doc, DocumentFilterConfig(lang_id_scorer=scorer(0.8))) is None
    assert seen == [GOOD_TEXT, GOOD_TEXT]  # the full text, as it is
    assert check_document(doc, DocumentFilterConfig(lang_id_scorer=scorer(0.0), min_lang_id=None)) is None
    assert check_paragraph(GOOD[0], ParagraphFilterConfig(lang_id_scorer=scorer(0.5))) == "paragraph_lang_id"


def test_perplexity_hook_boundaries():
    doc = doc_of(GOOD_TEXT, img())
    assert check_document(doc, DocumentFilterConfig(perplexity_scorer=lambda t: 1500.0)) is None
    assert check_document(doc, DocumentFilterConfig(perplexity_scorer=lambda t: 1500.1)) == "doc_perplexity"
    assert check_paragraph(GOOD[0], ParagraphFilterConfig(perplexity_scorer=lambda t: 2e3)) == "paragraph_perplexity"


def test_configs_validate_and_export_a_json_schema():
    with pytest.raises(ValidationError, match="min_word"):
        ParagraphFilterConfig(min_word=3)  # unknown key
    with pytest.raises(ValidationError):
        DocumentFilterConfig(max_flagged_words=-0.1)
    with pytest.raises(ValidationError):
        DocumentFilterConfig(lang_id_scorer="fasttext")  # not callable
    schema = ObelicsFilterConfig.model_json_schema()
    for name in ("ParagraphFilterConfig", "DocumentFilterConfig"):
        props = schema["$defs"][name]["properties"]
        assert "min_lang_id" in props and "lang_id_scorer" not in props and "perplexity_scorer" not in props
    json.dumps(schema)
    dumped = ObelicsFilterConfig(document=DocumentFilterConfig(lang_id_scorer=len)).model_dump()
    assert "lang_id_scorer" not in dumped["document"] and dumped["document"]["min_words"] == 10
    assert ImageFilterConfig(formats={"JPG", ".PNG"}).formats == frozenset({"jpg", "png"})


def test_defaults_are_the_obelics_thresholds():
    p, d, i = ParagraphFilterConfig(), DocumentFilterConfig(), ImageFilterConfig()
    assert (p.min_words, p.max_words, d.min_words, d.max_words) == (4, 1000, 10, 2000)
    assert (p.char_repetition_n, p.max_char_repetition, d.max_char_repetition) == (10, 0.1, 0.1)
    assert (p.word_repetition_n, p.max_word_repetition, d.max_word_repetition) == (5, 0.1, 0.2)
    assert (p.max_special_characters, d.max_special_characters) == (0.3, 0.275)
    assert (p.min_stopwords, d.min_stopwords, p.max_flagged_words, d.max_flagged_words) == (0.3, 0.35, 0.01, 0.01)
    assert (p.min_punctuation, p.punctuation_min_tokens, d.min_punctuation) == (0.001, 12, 0.03)
    assert (p.min_common_words, d.min_common_words, p.spam_words_drop_at) == (0.8, 0.9, 0.12)
    assert (d.min_images, d.max_images, d.require_text_and_image) == (1, 30, True)
    assert i.formats == {"jpg", "jpeg", "png", "webp"}
    assert (i.min_side, i.max_side, i.max_aspect_ratio, i.max_url_occurrences) == (150, 20_000, 2.0, 10)


# --------------------------------------------------------------------------------------------------
# filter_paragraphs


def test_filter_paragraphs_keeps_passing_paragraphs_in_order_and_counts_the_rest():
    text = "\n\n".join([GOOD[0], "Too short.", GOOD[1], SPAM_PARAGRAPH, GOOD[2], f"{RARE} " * 30])
    cleaned, removed = filter_paragraphs(text)
    assert cleaned == "\n\n".join(GOOD)
    assert removed == Counter({"paragraph_too_few_words": 1, "paragraph_spam": 1, "paragraph_char_repetition": 1})


def test_filter_paragraphs_leaves_kept_paragraphs_byte_identical():
    odd = "  " + GOOD[0].replace(". ", ".\n") + "  "  # single newlines and edge spaces are kept
    cleaned, removed = filter_paragraphs(odd + "\n\nNo.")
    assert cleaned == odd and removed == Counter({"paragraph_too_few_words": 1})


def test_filter_paragraphs_all_removed_and_empty_paragraphs():
    assert filter_paragraphs("a b\n\nc d") == ("", Counter({"paragraph_too_few_words": 2}))
    cleaned, removed = filter_paragraphs(GOOD[0] + "\n\n\n\n" + GOOD[1])  # an empty paragraph between
    assert cleaned == GOOD[0] + "\n\n" + GOOD[1] and removed == Counter({"paragraph_too_few_words": 1})
    assert filter_paragraphs("") == ("", Counter({"paragraph_too_few_words": 1}))


def test_filter_paragraphs_custom_wordlists():
    wl = WordLists.default().replace(spam_words={"library", "MUSIC"})
    text = GOOD[2]  # 15 words, library and music: 2/15 >= 0.12
    assert filter_paragraphs(text)[0] == text
    assert filter_paragraphs(text, wordlists=wl) == ("", Counter({"paragraph_spam": 1}))


# --------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (meta(fmt="jpg"), None),
        (meta(fmt="jpeg"), None),
        (meta(fmt="png"), None),
        (meta(fmt="webp"), None),
        (meta(fmt="JPEG"), None),
        (meta(fmt=".png"), None),
        (meta(fmt="gif"), "image_format"),
        (meta(fmt="svg"), "image_format"),
        (meta(fmt=None), None),  # no format: passes, as in the original
        (meta(fmt=""), None),
        # sides 150 - 20,000, original size
        (meta(149, 200), "image_too_small"),
        (meta(150, 200), None),
        (meta(151, 200), None),
        (meta(200, 149), "image_too_small"),
        (meta(19_999, 19_999), None),
        (meta(20_000, 20_000), None),
        (meta(20_001, 20_000), "image_too_large"),
        (meta(20_000, 20_001), "image_too_large"),
        # rendered size when present
        (meta(300, 200, rendered_width=149, rendered_height=200), "image_too_small"),
        (meta(300, 200, rendered_width=150, rendered_height=150), None),
        (meta(300, 200, rendered_height=149), "image_too_small"),
        (meta(300, 200, rendered_width=20_001, rendered_height=20_000), "image_too_large"),
        (meta(300, 200, rendered_width="300px", rendered_height="149"), "image_too_small"),
        (meta(400, 400, rendered_width="50%", rendered_height="50%"), None),  # 200 x 200
        (meta(400, 400, rendered_width="30%"), "image_too_small"),  # 120
        (meta(300, 200, rendered_width="auto", rendered_height=None), None),  # unusable: ignored
        # aspect ratio <= 2 (original size)
        (meta(300, 150), None),
        (meta(150, 300), None),
        (meta(301, 150), "image_aspect_ratio"),
        (meta(150, 301), "image_aspect_ratio"),
        (meta(299, 150), None),
        # ... rendered size when the original is unknown
        (meta(None, None, rendered_width=400, rendered_height=150), "image_aspect_ratio"),
        (meta(None, None, rendered_width=300, rendered_height=150), None),
        (meta(None, None), None),  # nothing known: passes
        # order: format, small, large, aspect
        (meta(100, 30_000, fmt="gif"), "image_format"),
        (meta(100, 30_000), "image_too_small"),
        (meta(160, 30_000), "image_too_large"),
    ],
)
def test_check_image(m, expected):
    assert check_image(m) == expected


def test_check_image_rules_can_be_disabled_or_changed():
    assert check_image(meta(fmt="gif"), ImageFilterConfig(formats=None)) is None
    assert check_image(meta(10, 10), ImageFilterConfig(min_side=None)) is None
    assert check_image(meta(30_000, 20_000), ImageFilterConfig(max_side=None)) is None
    assert check_image(meta(1000, 200), ImageFilterConfig(max_aspect_ratio=None)) is None
    assert check_image(meta(1000, 200), ImageFilterConfig(max_aspect_ratio=5)) is None
    assert check_image(meta(0, 200), ImageFilterConfig(min_side=None)) == "image_aspect_ratio"
    assert check_image(meta(fmt="gif"), ImageFilterConfig(formats={"GIF"})) is None


def test_overused_urls():
    counts = {"a": 11, "b": 10, "c": 1, "d": 100}
    assert overused_urls(counts) == {"a", "d"}  # more than 10
    assert overused_urls(counts, max_count=0) == {"a", "b", "c", "d"}
    assert overused_urls(counts, max_count=None) == set()
    table = pa.table({"url": ["a", "b"], "n": pa.array([11, 10], pa.int64())})
    assert overused_urls(table) == {"a"}


# --------------------------------------------------------------------------------------------------
# Real-layout parquet rows and URL counting

OBELICS_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.string())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
        ("texts", pa.list_(pa.string())),
    ]
)


def real_row(items, url="https://example.com/page") -> dict:
    """A row as stored in the released files: parallel lists, JSON-string metadata."""
    doc = doc_of(
        *items,
        general={"url": url, "warc_filename": "crawl-data/x.warc.gz", "warc_record_offset": 1, "warc_record_length": 2},
    )
    return doc.to_row()


def write_obelics(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), path)
    return path


def test_from_row_reads_the_real_parquet_layout(tmp_path):
    rows = [real_row([GOOD[0], img(1), GOOD[1], img(2, fmt="png")]), real_row([img(3), GOOD[2]])]
    path = write_obelics(tmp_path / "train-00000-of-01432-abc.parquet", rows)
    table = pq.read_table(path)
    assert table.schema.field("metadata").type == pa.string()
    docs = [ObelicsDocument.from_row(r) for r in table.to_pylist()]
    first = docs[0]
    assert first.texts == [GOOD[0], None, GOOD[1], None]
    assert first.images == [None, "https://example.com/img1.jpg", None, "https://example.com/img2.jpg"]
    assert first.metadata[0] is None and first.metadata[3]["format"] == "png"
    assert first.general_metadata["warc_record_offset"] == 1 and first.url == "https://example.com/page"
    assert (first.n_images, first.n_texts) == (2, 2)
    assert first.full_text() == GOOD[0] + "\n\n" + GOOD[1]
    assert ObelicsDocument.from_row(first.to_row()) == first
    # pandas hands list columns over as numpy arrays
    via_pandas = ObelicsDocument.from_row(table.to_pandas().iloc[1].to_dict())
    assert via_pandas == docs[1]


def good_row(**changes) -> dict:
    row = real_row([GOOD[0], img(1), GOOD[1]])
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"texts": [], "images": []}, r"missing column\(s\) 'metadata', 'general_metadata'"),
        (good_row(texts="hello"), r"column 'texts' must be a list, got str"),
        (good_row(images=None), r"column 'images' must be a list, got NoneType"),
        (good_row(metadata="[null, {"), r"column 'metadata' is not valid JSON"),
        (good_row(metadata='{"a": 1}'), r"column 'metadata' must hold a JSON list, got object"),
        (good_row(metadata=None), r"column 'metadata' must hold a JSON list, got null"),
        (good_row(general_metadata="[]"), r"column 'general_metadata' must hold a JSON object, got list"),
        (good_row(general_metadata="nope"), r"column 'general_metadata' is not valid JSON"),
        (good_row(metadata="[null, {}]"), r"len\(texts\)=3, len\(images\)=3, len\(metadata\)=2"),
        (good_row(images=[None, "u"]), r"len\(texts\)=3, len\(images\)=2, len\(metadata\)=3"),
        (good_row(images=["u", "https://example.com/img1.jpg", None]), r"index 0: both text and image are set"),
        (good_row(texts=[GOOD[0], None, None]), r"index 2: neither text nor image is set"),
        (good_row(texts=[GOOD[0], None, 3]), r"index 2: text must be a string, got int"),
        (good_row(images=[None, 7, None]), r"index 1: image must be a URL string, got int"),
        (good_row(metadata=json.dumps([{"src": "x"}, meta(), None])), r"index 0: metadata must be null at a text"),
        (good_row(metadata=json.dumps([None, None, None])), r"index 1: metadata must be an object at an image"),
    ],
)
def test_from_row_rejects_malformed_rows_precisely(row, message):
    with pytest.raises(ValueError, match=message):
        ObelicsDocument.from_row(row)


def test_from_row_rejects_non_mappings():
    with pytest.raises(ValueError, match="must be a mapping"):
        ObelicsDocument.from_row(None)


def test_documents_validate_on_construction():
    with pytest.raises(ValueError, match="index 0: neither text nor image"):
        ObelicsDocument([None], [None], [None], {})
    assert ObelicsDocument([], [], [], {}).n_images == 0


def test_count_image_urls_over_real_layout_files(tmp_path):
    shared = "https://cdn.example.com/logo.png"
    a = write_obelics(
        tmp_path / "train-00000-of-01432-a.parquet",
        [
            real_row([GOOD[0], (shared, meta()), GOOD[1], ("https://example.com/1.jpg", meta())]),
            real_row([(shared, meta()), GOOD[2], (shared, meta())]),  # twice in one document: counts twice
            real_row([GOOD[0]]),  # images column all null
        ],
    )
    b = write_obelics(
        tmp_path / "train-00001-of-01432-b.parquet",
        [real_row([("https://example.com/1.jpg", meta()), GOOD[0], (shared, meta())])],
    )
    table = count_image_urls([a, b])
    assert table.schema == pa.schema([("url", pa.string()), ("n", pa.int64())])
    assert table.to_pylist() == [{"url": shared, "n": 4}, {"url": "https://example.com/1.jpg", "n": 2}]
    assert count_image_urls([a, b], min_count=3).column("url").to_pylist() == [shared]
    assert count_image_urls(str(a)).to_pylist() == [
        {"url": shared, "n": 3},
        {"url": "https://example.com/1.jpg", "n": 1},
    ]
    assert count_image_urls(str(tmp_path / "*.parquet"), memory_limit="256MB", threads=1) == table
    assert overused_urls(table, max_count=3) == {shared}
    with pytest.raises(ValueError, match="no parquet files"):
        count_image_urls([])


# --------------------------------------------------------------------------------------------------
# END_OF_DOCUMENT cleanup


@pytest.mark.parametrize(
    ("text", "expected", "n"),
    [
        (f"One.\n\n{END_OF_DOCUMENT}\n\nTwo.", "One.\n\nTwo.", 1),
        (f"One.\n\n{END_OF_DOCUMENT}", "One.", 1),
        (f"{END_OF_DOCUMENT}\n\n{END_OF_DOCUMENT}\n\nTwo.", "Two.", 2),
        (f"One.\n\n  {END_OF_DOCUMENT} \n\nTwo.", "One.\n\nTwo.", 1),
        (f"foo {END_OF_DOCUMENT} bar", "foo bar", 1),
        (f"foo{END_OF_DOCUMENT}bar", "foo bar", 1),
        (f"line one\n{END_OF_DOCUMENT}\nline two", "line one\nline two", 1),
        (f"{END_OF_DOCUMENT}", "", 1),
        (f"{END_OF_DOCUMENT}\n\n{END_OF_DOCUMENT}", "", 2),
        ("  no token\n\nhere ", "  no token\n\nhere ", 0),
    ],
)
def test_strip_end_of_document_text(text, expected, n):
    assert strip_end_of_document_text(text) == (expected, n)


def test_strip_end_of_document_drops_texts_that_become_empty():
    doc = doc_of(GOOD[0] + f"\n\n{END_OF_DOCUMENT}", img(1), END_OF_DOCUMENT, img(2), f"{END_OF_DOCUMENT}\n\n{GOOD[1]}")
    cleaned, n = strip_end_of_document(doc)
    assert n == 3
    assert cleaned.texts == [GOOD[0], None, None, GOOD[1]]
    assert cleaned.images == [None, doc.images[1], doc.images[3], None]
    assert cleaned.metadata == [None, doc.metadata[1], doc.metadata[3], None]
    assert doc.texts[2] == END_OF_DOCUMENT  # input untouched
    untouched = doc_of(GOOD[0], img())
    assert strip_end_of_document(untouched) == (untouched, 0)


# --------------------------------------------------------------------------------------------------
# clean_document


def test_clean_document_keeps_a_good_document_unchanged():
    doc = doc_of(GOOD[0], img(1), GOOD[1], img(2), GOOD[2])
    assert clean_document(doc) == (doc, None, Counter())


def test_clean_document_removes_paragraphs_images_and_tokens_and_merges_texts():
    doc = doc_of(
        GOOD[0] + "\n\nShare this.",
        img(1, fmt="gif"),
        GOOD[1] + f"\n\n{END_OF_DOCUMENT}",
        img(2),
        img(3, w=100),
        ("https://ads.example.com/banner.jpg", meta()),
        GOOD[2],
    )
    cleaned, reason, removed = clean_document(doc, overused={"https://ads.example.com/banner.jpg"})
    assert reason is None
    assert cleaned.texts == [GOOD[0] + "\n\n" + GOOD[1], None, GOOD[2]]  # merged across the removed gif
    assert cleaned.images == [None, "https://example.com/img2.jpg", None]
    assert cleaned.metadata[1]["src"] == "https://example.com/a.jpg"
    assert cleaned.general_metadata == doc.general_metadata
    assert removed == Counter(
        {
            "end_of_document_token": 1,
            "paragraph_too_few_words": 1,
            "image_format": 1,
            "image_too_small": 1,
            "image_overused_url": 1,
        }
    )
    assert doc.texts[0].endswith("Share this.")  # input untouched


@pytest.mark.parametrize(
    ("items", "cfg", "reason"),
    [
        ([GOOD_TEXT], None, "doc_too_few_images"),
        ([GOOD_TEXT, img(1, fmt="gif")], None, "doc_too_few_images"),
        ([GOOD_TEXT, *[img(i) for i in range(31)]], None, "doc_too_many_images"),
        ([img(1), "Too short."], None, "doc_no_text"),
        ([img(1), END_OF_DOCUMENT], None, "doc_no_text"),
        ([GOOD_TEXT], ObelicsFilterConfig(document=DocumentFilterConfig(min_images=None)), "doc_no_image"),
        ([img(1), "The children played in the park."], None, "doc_too_few_words"),
        ([img(1), "The children played in the park.", img(2)], None, "doc_too_few_words"),
        (
            [img(1), GOOD[0], img(2), GOOD[1] + f"\n\n{FLAGGED} " + GOOD[2]],
            ObelicsFilterConfig(paragraph=ParagraphFilterConfig(max_flagged_words=None)),
            "doc_flagged_words",
        ),
    ],
)
def test_clean_document_drop_reasons(items, cfg, reason):
    cleaned, got, _ = clean_document(doc_of(*items), cfg)
    assert (cleaned, got) == (None, reason)


def test_clean_document_image_count_bounds():
    assert clean_document(doc_of(GOOD_TEXT, *[img(i) for i in range(30)]))[1] is None
    assert clean_document(doc_of(GOOD_TEXT, img()))[1] is None
    cfg = ObelicsFilterConfig(document=DocumentFilterConfig(min_images=None, require_text_and_image=False))
    kept, reason, _ = clean_document(doc_of(GOOD_TEXT), cfg)
    assert reason is None and kept.n_images == 0


def test_clean_document_counts_removals_of_dropped_documents():
    doc = doc_of(GOOD_TEXT, ("https://ads.example.com/x.jpg", meta()), "Too short.")
    cleaned, reason, removed = clean_document(doc, overused={"https://ads.example.com/x.jpg"})
    assert (cleaned, reason) == (None, "doc_too_few_images")
    assert removed == Counter({"image_overused_url": 1, "paragraph_too_few_words": 1})


def test_clean_document_uses_the_given_configs():
    doc = doc_of(GOOD[0], img(1), "Too short.")
    relaxed = ObelicsFilterConfig(paragraph=ParagraphFilterConfig(min_words=1), document=DocumentFilterConfig())
    cleaned, reason, removed = clean_document(doc, relaxed)
    assert reason is None and cleaned.texts[-1] == "Too short." and removed == Counter()


# --------------------------------------------------------------------------------------------------
# Word lists (package data)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("stopwords", 100, 250), ("flagged_words", 30, 100), ("spam_words", 25, 80), ("common_words", 700, 3000)],
)
def test_wordlists_load_from_package_data(name, low, high):
    resource = files("curation.sources.obelics").joinpath("wordlists", f"{name}.txt")
    assert resource.is_file()
    lines = resource.read_text("utf-8").splitlines()
    assert lines[0].startswith("# ") and any("How it was made" in line for line in lines if line.startswith("#"))
    words = load_wordlist(name)
    assert low <= len(words) <= high
    assert words == getattr(WordLists.default(), name)
    for w in words:  # entries can match split_words output: lowercase, no spaces, no special edges
        assert w == w.lower() and w.split() == [w] and split_words(w) == [w], w
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert len(entries) == len(set(entries)), "duplicates"


def test_wordlist_relations():
    wl = WordLists.default()
    assert wl.stopwords <= wl.common_words  # the common list is the union of stopwords and frequent words
    assert not wl.flagged_words & wl.common_words
    assert not wl.spam_words & wl.stopwords
    assert {STOP, COMMON} <= wl.common_words and STOP in wl.stopwords and COMMON not in wl.stopwords
    assert SPAM in wl.spam_words and FLAGGED in wl.flagged_words
    assert RARE not in wl.common_words | wl.stopwords | wl.spam_words | wl.flagged_words


def test_wordlists_can_be_replaced_and_read(tmp_path):
    path = tmp_path / "common.txt"
    path.write_text("# my list\nHouse\n\nthe\n")
    wl = WordLists.default().replace(common_words=WordLists.read(path))
    assert wl.common_words == {"house", "the"} and wl.stopwords == WordLists.default().stopwords
    with pytest.raises(ValueError, match="unknown word list"):
        WordLists.default().replace(swear_words=[])
    with pytest.raises(ValueError, match="unknown word list"):
        load_wordlist("nope")


def test_wordlists_are_package_data_in_pyproject():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "sources/obelics/wordlists/*.txt" in data["tool"]["setuptools"]["package-data"]["curation"]
