"""Text length bounds in characters and words."""

from __future__ import annotations

from typing import Any, ClassVar

from curation.recipe.steps import TextLengthStep
from curation.sample import Sample
from curation.steps.contract import RecordStep
from schemas import PairRecord, SftRecord

_FIELD_KIND = {"caption": "pair", "answers": "sft", "questions": "sft"}


class TextLength(RecordStep):
    config = TextLengthStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "text_too_short": "fewer characters than min_chars (whitespace stripped)",
        "text_too_long": "more characters than max_chars",
        "too_few_words": "fewer words than min_words",
        "too_many_words": "more words than max_words",
    }

    @classmethod
    def kind_error(cls, cfg: Any, kind: str) -> str | None:
        need = _FIELD_KIND.get(cfg.field)
        return f"field {cfg.field!r} needs {need} records (or field: all)" if need and kind != need else None

    def _texts(self, sample: Sample) -> list[str]:
        r = sample.record
        field = self.cfg.field
        if field == "caption":
            return [r.caption] if isinstance(r, PairRecord) else []
        if field in ("answers", "questions") and isinstance(r, SftRecord):
            return [t.assistant if field == "answers" else t.user for t in r.turns]
        return r.texts_for_tokens()[0]

    def __call__(self, sample: Sample) -> Sample | str:
        c = self.cfg
        texts = self._texts(sample)
        chars = sum(len(t.strip()) for t in texts)
        if chars < c.min_chars:
            return "text_too_short"
        if c.max_chars is not None and chars > c.max_chars:
            return "text_too_long"
        if c.min_words or c.max_words is not None:
            words = sum(len(t.split()) for t in texts)
            if words < c.min_words:
                return "too_few_words"
            if c.max_words is not None and words > c.max_words:
                return "too_many_words"
        return sample
