"""``score_filter``: bounds on a score, for whole samples or for the turns of a conversation.

- ``level: sample``: the meta number ``score`` (a reader's, a step's or a judge's: ``relevance_min``,
  ``clip_score``, ``aesthetic``); below ``min`` is ``score_below_min``, above ``max`` is ``score_above_max``.
- ``level: turn`` (sft): the per-turn ratings ``meta.ratings[score]`` (FineVision's, or a judge step's: the same
  layout). Turns out of bounds are removed, with their entries in every list of ``meta.ratings`` (and
  ``meta.turn_sources``); each ``<axis>_min`` (and ``<axis>_mean`` when present) is recomputed over the rated turns
  left (null when none is rated, as the judge step writes it). A sample that loses every turn is ``no_turns_left``.

A sample without the score is kept or dropped (``score_missing``) as ``missing`` says, and so is an unrated turn (a null
rating: a judge's unparsed reply) at turn level; a score that is not a number, or per-turn ratings that are not one
rating per turn, is ``score_invalid``. The report (summed over partitions): ``missing_kept`` (samples without the score)
and, at turn level, ``unrated_turns_kept``, ``turns_removed`` and ``answer_tokens_removed`` (every removed turn, those
of samples dropped as ``no_turns_left`` included; answer tokens counted with the recipe's tokenizer, as the writer
counts them) and ``samples_changed`` (kept samples that lost a turn). The writer recounts a kept sample's turns and
answer tokens from the record, so the sidecars stay exact.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeGuard

from pydantic import JsonValue

from curation.recipe import ScoreFilterStep
from curation.sample import Sample
from curation.steps.contract import RecordStep, StepContext
from schemas import SftRecord
from shards.tokens import count_each, make_token_counter


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ScoreFilter(RecordStep):
    config = ScoreFilterStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "score_below_min": "the sample's score is below min (level: sample)",
        "score_above_max": "the sample's score is above max (level: sample)",
        "score_missing": "the sample has no such score, or (level: turn) no ratings of that axis (missing: drop)",
        "score_invalid": (
            "the score is not a number, or (level: turn) the ratings of an axis are not one rating (a number or null) "
            "per turn"
        ),
        "no_turns_left": "every turn's rating is out of bounds, or unrated with missing: drop (level: turn)",
    }

    @classmethod
    def kind_error(cls, cfg: ScoreFilterStep, kind: str) -> str | None:
        return "needs sft records at level turn" if cfg.level == "turn" and kind != "sft" else None

    def __init__(self, cfg: ScoreFilterStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.counter = make_token_counter(*context.tokenizer) if cfg.level == "turn" else None
        self.missing_kept = self.unrated_turns_kept = 0
        self.samples_changed = self.turns_removed = self.answer_tokens_removed = 0

    def _out_of_bounds(self, value: float) -> str | None:
        if self.cfg.min is not None and value < self.cfg.min:
            return "score_below_min"
        if self.cfg.max is not None and value > self.cfg.max:
            return "score_above_max"
        return None

    def _missing(self, sample: Sample) -> Sample | str:
        if self.cfg.missing == "drop":
            return "score_missing"
        self.missing_kept += 1
        return sample

    def __call__(self, sample: Sample) -> Sample | str:
        if self.cfg.level == "turn":
            return self._filter_turns(sample)
        value = sample.record.meta.get(self.cfg.score)
        if value is None:
            return self._missing(sample)
        if not is_number(value):
            return "score_invalid"
        return self._out_of_bounds(value) or sample

    def _filter_turns(self, sample: Sample) -> Sample | str:
        record = sample.record
        if not isinstance(record, SftRecord):
            raise TypeError(f"score_filter at level turn works on sft records, not {record.kind} ({record.key!r})")
        ratings = record.meta.get("ratings")
        values = ratings.get(self.cfg.score) if isinstance(ratings, dict) else None
        if values is None or not isinstance(ratings, dict):
            return self._missing(sample)
        turns = record.turns
        lists: dict[str, list[JsonValue]] = {}
        for axis, axis_values in ratings.items():  # every axis one rating per turn: the lists stay parallel
            if not isinstance(axis_values, list) or len(axis_values) != len(turns):
                return "score_invalid"
            lists[axis] = axis_values
        sources = record.meta.get("turn_sources")
        if isinstance(sources, list) and len(sources) != len(turns):  # would stop matching the turns kept
            return "score_invalid"
        values = lists[self.cfg.score]
        if any(v is not None and not is_number(v) for v in values):
            return "score_invalid"
        keep: list[int] = []
        for i, v in enumerate(values):
            if v is None:  # an unrated turn (a judge's unparsed reply): kept or removed as ``missing`` says
                if self.cfg.missing == "keep":
                    self.unrated_turns_kept += 1
                    keep.append(i)
            elif is_number(v) and self._out_of_bounds(v) is None:
                keep.append(i)
        if len(keep) == len(turns):
            return sample
        kept = set(keep)
        removed = [t.assistant for i, t in enumerate(turns) if i not in kept]
        assert self.counter is not None  # made at level turn
        self.turns_removed += len(removed)
        self.answer_tokens_removed += sum(count_each(self.counter, removed))
        if not keep:
            return "no_turns_left"
        record.turns = [turns[i] for i in keep]
        meta = record.meta
        left: dict[str, JsonValue] = {}
        for axis, v in lists.items():
            left[axis] = axis_left = [v[i] for i in keep]
            _recompute(meta, axis, axis_left)
        meta["ratings"] = left
        for key in [k for k in meta if k.endswith(("_min", "_mean")) and k.rsplit("_", 1)[0] not in lists]:
            meta[key] = None  # a per-sample min/mean without per-turn ratings cannot be told for the turns left
        sources = meta.get("turn_sources")
        if isinstance(sources, list):
            meta["turn_sources"] = [sources[i] for i in keep]
        self.samples_changed += 1
        return sample

    def report(self) -> dict[str, Any]:
        if self.cfg.level == "sample":
            return {"missing_kept": self.missing_kept}
        return {
            "missing_kept": self.missing_kept,
            "unrated_turns_kept": self.unrated_turns_kept,
            "samples_changed": self.samples_changed,
            "turns_removed": self.turns_removed,
            "answer_tokens_removed": self.answer_tokens_removed,
        }

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """The one line ``curate build`` prints: what the filter removed, and samples that had no score."""
        parts = []
        if "turns_removed" in report:
            parts.append(
                f"{report['turns_removed']:,} turns ({report['answer_tokens_removed']:,} answer tokens) removed, "
                f"{report['samples_changed']:,} samples shortened"
            )
        if report.get("missing_kept"):
            parts.append(f"{report['missing_kept']:,} samples without the score kept")
        return {"summary": "; ".join(parts)} if parts else None


def _recompute(meta: dict[str, JsonValue], axis: str, left: list[JsonValue]) -> None:
    """``<axis>_min`` (and ``<axis>_mean`` when present) over the rated turns left (null when none is rated), as the
    reader and the judge step compute them."""
    numbers = [v for v in left if is_number(v)]
    meta[f"{axis}_min"] = min(numbers) if numbers else None
    if f"{axis}_mean" in meta:
        meta[f"{axis}_mean"] = round(sum(numbers) / len(numbers), 4) if numbers else None
