"""Benchmark metrics: VQAv2 normalization and leave-one-out accuracy, ANLS at its threshold, every multiple-choice
answer form, MME acc + acc+, and the trial score."""

from __future__ import annotations

import pytest

from curation.recipe.selection import ScoreConfig
from curation.selection.metrics import (
    anls,
    extract_choice,
    mme_answer,
    mme_scores,
    normalize_vqa,
    score,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),  # number words
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("The dog", "dog"),  # articles
        ("a man and an apple", "man and apple"),
        ("dont", "don't"),  # contractions
        ("isnt", "isn't"),
        ("whats that", "what's that"),
        ("2.5", "2.5"),  # a period before a digit stays
        ("Yes.", "yes"),  # other periods go
        ("mr. smith", "mr smith"),
        ("1,000", "1000"),  # a digit comma digit removes the punctuation
        ("red, white", "red white"),  # punctuation next to a space is removed
        ("red-white", "red white"),  # otherwise it becomes a space
        ("left/right", "left right"),
        ("yes!", "yes"),
        ("(left)", "left"),
        ("  Three \t Apples\n", "3 apples"),  # case and whitespace
        ("it's", "it's"),  # apostrophes are kept
    ],
)
def test_normalize_vqa(text: str, expected: str) -> None:
    assert normalize_vqa(text) == expected


@pytest.mark.parametrize(
    ("agree", "expected"),
    # k of 10 agree: k answers see k-1 others, 10-k see k: (k*min(3,k-1) + (10-k)*min(3,k)) / 30
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_leave_one_out(agree: int, expected: float) -> None:
    refs = ["2"] * agree + ["3"] * (10 - agree)
    assert vqa_accuracy("two", refs) == expected


def test_vqa_accuracy_normalizes_both_sides_and_fewer_references() -> None:
    assert vqa_accuracy("Two.", ["2", "two", "TWO"]) == pytest.approx(2 / 3)  # each sees 2 matches of 3
    assert vqa_accuracy("yes", ["yes"]) == 0.0  # a single reference has no other answers
    assert vqa_accuracy("the dog", ["dog", "Dog", "a dog", "cat"]) == 0.75  # 3 x min(1, 2/3) + 1 x 1 = 3 of 4
    with pytest.raises(ValueError, match="reference"):
        vqa_accuracy("x", [])


def test_anls_threshold_and_best_reference() -> None:
    assert anls("ab", ["ac"]) == 0.5  # distance 1 of 2: exactly the threshold is kept
    assert anls("abc", ["axy"]) == 0.0  # 1/3 < 0.5
    assert anls("abcd", ["abxy"]) == 0.5
    assert anls("abcde", ["abxyz"]) == 0.0  # 0.4
    assert anls("  Hello   WORLD ", ["hello world"]) == 1.0  # lowercase, whitespace collapsed
    assert anls("invoice 42", ["nothing alike", "invoice 43"]) == 0.9  # best over the references
    assert anls("abcd", ["abxy"], threshold=0.6) == 0.0
    assert anls("", [""]) == 1.0


OPTIONS = {"A": "red", "B": "blue", "C": "green apple", "D": "green"}


@pytest.mark.parametrize(
    "prediction",
    ["B", "B.", "(B)", "B)", "B:", " B \n", "B: blue", "B. blue", "(B) blue", "B) blue", "Answer: B",
     "answer: (B)", "The answer is B.", "The answer is (B)", "The correct answer is B, blue."],
)  # fmt: skip
def test_extract_choice_letter_forms(prediction: str) -> None:
    assert extract_choice(prediction, OPTIONS) == "B"


def test_extract_choice_option_text() -> None:
    assert extract_choice("Blue", OPTIONS) == "B"
    assert extract_choice("It looks blue to me.", OPTIONS) == "B"
    assert extract_choice("green", OPTIONS) == "D"  # the exact text wins over "green apple"
    assert extract_choice("a green apple on a table", OPTIONS) is None  # "green" and "green apple": not unique
    assert extract_choice("red or blue", OPTIONS) is None
    assert extract_choice("bluetooth", OPTIONS) is None  # whole words only
    assert extract_choice("I cannot tell", OPTIONS) is None
    assert extract_choice("E", OPTIONS) is None  # not an option
    assert extract_choice("A bird sits on a branch", {"A": "cat", "B": "bird"}) == "B"  # "A" here is an article


def test_mme_answer() -> None:
    assert [mme_answer(p) for p in ["Yes", "no.", "Yes, it is.", "No, there is none", "Maybe", ""]] == [
        "yes",
        "no",
        "yes",
        "no",
        None,
        None,
    ]


def test_mme_scores_acc_and_acc_plus() -> None:
    items = [
        # color (perception): 2 images; img1 both right, img2 one right -> acc 75, acc+ 50
        ("color", "img1", "perception", True),
        ("color", "img1", "perception", True),
        ("color", "img2", "perception", True),
        ("color", "img2", "perception", False),
        # OCR (perception): 1 image, both right -> 100 + 100
        ("OCR", "img3", "perception", True),
        ("OCR", "img3", "perception", True),
        # code_reasoning (cognition): 2 images, none fully right -> acc 25, acc+ 0
        ("code_reasoning", "img4", "cognition", False),
        ("code_reasoning", "img4", "cognition", True),
        ("code_reasoning", "img5", "cognition", False),
        ("code_reasoning", "img5", "cognition", False),
    ]
    assert mme_scores(items) == {
        "color": 125.0,
        "color_acc": 75.0,
        "color_acc_plus": 50.0,
        "OCR": 200.0,
        "OCR_acc": 100.0,
        "OCR_acc_plus": 100.0,
        "code_reasoning": 25.0,
        "code_reasoning_acc": 25.0,
        "code_reasoning_acc_plus": 0.0,
        "perception": 325.0,
        "cognition": 25.0,
        "total": 350.0,
    }


def test_mme_scores_refuses_bad_categories() -> None:
    with pytest.raises(ValueError, match="perception or cognition"):
        mme_scores([("color", "i", "vision", True)])
    with pytest.raises(ValueError, match="both"):
        mme_scores([("color", "i", "perception", True), ("color", "j", "cognition", True)])
    with pytest.raises(ValueError, match="at least one"):
        mme_scores([])


def test_score_scales_then_averages() -> None:
    cfg = ScoreConfig(metrics={"mme/total": 1 / 28, "vqa/accuracy": 1.0, "mmbench/accuracy": 1.0, "doc/anls": 1.0})
    metrics = {"mme/total": 1400.0, "vqa/accuracy": 60.0, "mmbench/accuracy": 70.0, "doc/anls": 80.0, "x/y": 5.0}
    assert score(metrics, cfg) == pytest.approx((50 + 60 + 70 + 80) / 4)


def test_score_names_a_missing_metric() -> None:
    cfg = ScoreConfig(metrics={"vqa/accuracy": 1.0, "mme/totl": 1.0})
    with pytest.raises(ValueError, match=r"'mme/totl'; available: mme/total, vqa/accuracy"):
        score({"vqa/accuracy": 1.0, "mme/total": 2.0}, cfg)
