"""The qa_filter step: every drop reason, its boundaries, its precedence, and the image-vs-text-only rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.recipe import QaFilterStep
from curation.sample import Sample
from curation.steps import build_steps
from curation.steps.contract import StepContext
from curation.steps.qa import QaFilter
from schemas import PairRecord, SftRecord

IMAGE = b"\x89PNG not decoded by this step"


def qa(**cfg) -> QaFilter:
    return QaFilter(QaFilterStep.model_validate({"step": "qa_filter", **cfg}), StepContext("qa_filter", Path(".")))


def sample(*turns: tuple[str, str], images: int = 0) -> Sample:
    record = SftRecord(
        key="k",
        source="s",
        images=[IMAGE] * images,
        turns=[{"user": u, "assistant": a} for u, a in turns],
    )
    return Sample(record, "origin")


OK = ("What colour is the car?", "Red.")


def test_a_passing_sample_is_returned_unchanged():
    s = sample(OK, ("And the tree?", "Green."), images=1)
    before = s.record.model_dump()
    assert qa()(s) is s
    assert s.record.model_dump() == before


def test_the_step_is_registered_under_qa_filter():
    [(label, step)] = build_steps([QaFilterStep.model_validate({"step": "qa_filter"})], Path("."))
    assert label == "qa_filter" and isinstance(step, QaFilter)


@pytest.mark.parametrize(
    ("cfg", "turns", "expected"),
    [
        ({"min_turns": 2}, [OK], "too_few_turns"),
        ({"min_turns": 2}, [OK, ("Why?", "Paint.")], None),
        ({"max_turns": 2}, [OK, ("Why?", "Paint."), ("Sure?", "Yes.")], "too_many_turns"),
        ({"max_turns": 2}, [OK, ("Why?", "Paint.")], None),
        ({}, [("Q?", "")], "empty_answer"),
        ({}, [("Q?", " \n\t ")], "empty_answer"),
        ({"min_answer_chars": 0}, [("Q?", "  ")], "empty_answer"),  # blank is never an answer
        ({"min_answer_chars": 4}, [("Q?", "abc")], "answer_too_short"),
        ({"min_answer_chars": 4}, [("Q?", "abcd")], None),
        ({"min_answer_chars": 4}, [("Q?", "  abc  ")], "answer_too_short"),  # stripped length
        ({"max_answer_chars": 5}, [("Q?", "abcdef")], "answer_too_long"),
        ({"max_answer_chars": 5}, [("Q?", " abcde\n")], None),
        ({}, [("", "A.")], "empty_question"),
        ({}, [(" \n ", "A.")], "empty_question"),
        ({"min_question_chars": 3}, [("Q?", "A.")], "question_too_short"),
        ({"min_question_chars": 3}, [("Qs?", "A.")], None),
        ({"max_question_chars": 3}, [("Why?", "A.")], "question_too_long"),
        ({"max_question_chars": 3}, [("Why", "A.")], None),
        ({}, [OK, ("Why?", "Paint."), OK], "repeated_turn"),
        ({}, [OK, ("  what COLOUR is\tthe car? ", "red.\n")], "repeated_turn"),  # normalized before comparing
        ({}, [OK, ("What colour is the car?", "Blue.")], None),  # same question, another answer
        ({}, [OK, ("Red.", "What colour is the car?")], None),  # swapped is not the same turn
        ({"repeated_turns": "keep"}, [OK, OK], None),
    ],
)
def test_reasons_and_boundaries_text_only(cfg, turns, expected):
    s = sample(*turns)
    got = qa(**cfg)(s)
    assert got == expected if expected else got is s


def test_an_image_sample_may_have_blank_questions():
    captioning = sample(("", "A red car next to a tree."), images=1)
    assert qa()(captioning) is captioning
    assert qa(min_question_chars=5)(captioning) is captioning  # blank is allowed, not too short
    assert qa()(sample(("", "A red car next to a tree."))) == "empty_question"  # text-only: not allowed
    assert qa(min_question_chars=5)(sample(("Why?", "A."), images=1)) == "question_too_short"  # non-blank: checked
    assert qa(max_question_chars=3)(sample(("Why?", "A."), images=2)) == "question_too_long"
    assert qa()(sample(("", ""), images=1)) == "empty_answer"  # the answer is still needed


def test_first_failing_check_wins_across_turns():
    f = qa(min_turns=1, max_turns=3, min_answer_chars=2, max_answer_chars=20, min_question_chars=2)
    long_answer = ("Question?", "x" * 21)
    assert f(sample(OK, OK, OK, OK)) == "too_many_turns"  # turn counts before anything else
    # an answer problem in a later turn beats a question problem in an earlier one
    assert f(sample(("Q", "Fine."), ("Question?", "y"))) == "answer_too_short"
    assert f(sample(("", "Fine."), long_answer)) == "answer_too_long"
    assert f(sample(long_answer, ("Question?", " "))) == "empty_answer"
    assert f(sample(("Q", "Fine."), ("", "Fine."))) == "empty_question"
    assert f(sample(("Q", "Fine."), ("Q", "Fine."))) == "question_too_short"  # before repeated_turn


def test_other_kinds_are_a_clear_type_error():
    pair = Sample(PairRecord(key="p", source="s", image=IMAGE, caption="a dog"), "origin")
    with pytest.raises(TypeError, match=r"qa_filter works on sft records, not pair .*pair_to_sft"):
        qa()(pair)
