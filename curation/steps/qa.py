"""Conversation checks on ``sft`` samples: turn counts, blank or out-of-bounds questions and answers, repeats.

Lengths are characters of the stripped text. The first failing check wins, in this order over all turns:
turn counts, answers (empty, too short, too long), questions (empty, too short, too long), repeated turns.
A sample with images may have blank questions (captioning: the image is the question).
"""

from __future__ import annotations

from typing import ClassVar

from curation.recipe.steps import QaFilterStep
from curation.sample import Sample
from curation.steps.contract import RecordStep
from schemas import SftRecord

# Per-turn reasons, by precedence (the lowest rank found over all turns wins).
_TURN_REASONS = (
    "empty_answer",
    "answer_too_short",
    "answer_too_long",
    "empty_question",
    "question_too_short",
    "question_too_long",
)


def _normal(text: str) -> str:
    """What makes two turns the same: whitespace collapsed, stripped, casefolded."""
    return " ".join(text.split()).casefold()


class QaFilter(RecordStep):
    config = QaFilterStep
    kinds: ClassVar[frozenset[str] | None] = frozenset({"sft"})
    drop_reasons: ClassVar[dict[str, str]] = {
        "too_few_turns": "fewer turns than min_turns",
        "too_many_turns": "more turns than max_turns",
        "empty_answer": "a turn's answer is blank",
        "answer_too_short": "a turn's answer is shorter than min_answer_chars",
        "answer_too_long": "a turn's answer is longer than max_answer_chars",
        "empty_question": "a turn's question is blank in a sample without images",
        "question_too_short": "a turn's question is shorter than min_question_chars",
        "question_too_long": "a turn's question is longer than max_question_chars",
        "repeated_turn": "the same question and answer twice in one conversation (repeated_turns: drop)",
    }

    def _turn_rank(self, question: str, answer: str, has_images: bool) -> int | None:
        """Rank in ``_TURN_REASONS`` of this turn's first failing check, or None."""
        c = self.cfg
        a = len(answer.strip())
        if a == 0:
            return 0
        if a < c.min_answer_chars:
            return 1
        if c.max_answer_chars is not None and a > c.max_answer_chars:
            return 2
        q = len(question.strip())
        if q == 0:
            return None if has_images else 3
        if q < c.min_question_chars:
            return 4
        if c.max_question_chars is not None and q > c.max_question_chars:
            return 5
        return None

    def __call__(self, sample: Sample) -> Sample | str:
        record = sample.record
        if not isinstance(record, SftRecord):
            raise TypeError(
                f"qa_filter works on sft records, not {record.kind} ({record.key!r}); "
                "convert them first (e.g. with pair_to_sft)"
            )
        c = self.cfg
        turns = record.turns
        if len(turns) < c.min_turns:
            return "too_few_turns"
        if c.max_turns is not None and len(turns) > c.max_turns:
            return "too_many_turns"
        has_images = bool(record.images)
        best: int | None = None
        for t in turns:
            rank = self._turn_rank(t.user, t.assistant, has_images)
            if rank is not None and (best is None or rank < best):
                best = rank
                if best == 0:
                    break
        if best is not None:
            return _TURN_REASONS[best]
        if c.repeated_turns == "drop" and len(turns) > 1:
            seen = {(_normal(t.user), _normal(t.assistant)) for t in turns}
            if len(seen) < len(turns):
                return "repeated_turn"
        return sample
