"""FineVision (HuggingFaceM4/FineVision): the Cauldron's row layout (``images``, ``texts`` of {user, assistant}) plus
the row's ``source`` and per-turn ratings 1-5 on four axes -> ``sft`` records with the ratings in meta.

Read as the Cauldron is (``CauldronReader``: the local hub layout ``<subset>/train-*.parquet`` by row groups, or
anything ``datasets`` opens). A kept row's meta: ``config`` (the subset), ``finevision_source`` (the row's
``source``), ``ratings`` (``{axis: [one rating per turn]}``, in turn order, only the axes the row has) and
``<axis>_min`` (the minimum over the turns, computed from the list).

Ratings are checked, never defaulted: a list without one rating per turn, a rating that is not an integer from 1 to
5, or a file's ``<axis>_min`` that disagrees with its list drops the row with a reason naming the axis (the lists are
trusted, and the disagreement is counted as a drop rather than silently corrected). An axis whose list and minimum are
both null (or absent from the file) is absent; a minimum without a list is kept alone, checked like a rating.
"""

from __future__ import annotations

from typing import Any, ClassVar

from curation.recipe import FineVisionSource
from curation.sample import Drop, Sample
from curation.sources.cauldron import COLUMNS, CauldronReader
from curation.sources.finevision_catalog import finevision_category
from schemas import SftRecord

AXES = ("relevance", "formatting", "visual_dependency", "image_correspondence")
RATING_COLUMNS = tuple(c for axis in AXES for c in (f"{axis}_ratings", f"{axis}_min"))
RATING_DROP_REASONS = {
    "invalid_rating:": (
        "a rating, a rating list or an `<axis>_min` of the axis after the colon that is not an integer from 1 to 5 "
        "(a null rating inside a list included)"
    ),
    "ratings_not_per_turn:": "the rating list of the axis after the colon does not have exactly one rating per turn",
    "rating_min_mismatch:": (
        "the row's `<axis>_min` (the axis after the colon) is not the minimum of its per-turn ratings: the lists are "
        "trusted, and the row is dropped so that the disagreement is counted"
    ),
}


class FineVisionReader(CauldronReader):
    config = FineVisionSource
    drop_reasons: ClassVar[dict[str, str]] = {**CauldronReader.drop_reasons, **RATING_DROP_REASONS}
    columns: ClassVar[tuple[str, ...]] = (*COLUMNS, "source", *RATING_COLUMNS)

    def __init__(self, source: FineVisionSource) -> None:  # the Cauldron reader's fields, under FineVision's model
        self.source = source
        self.config_name = source.config_name()

    def category(self) -> str | None:
        """The recipe's category, else FineVision's category of a known subset."""
        return self.source.category or finevision_category(self.config_name)

    def to_item(self, row: dict[str, Any], origin: str, default_key: str, image_root: str | None) -> Sample | Drop:
        item = super().to_item(row, origin, default_key, image_root)
        if not isinstance(item, Sample):
            return item
        record = item.record
        assert isinstance(record, SftRecord)  # the Cauldron path builds sft records
        found = rating_meta(row, len(record.turns), self.source.null_ratings == "unrated")
        if isinstance(found, tuple):
            reason, detail = found
            return Drop(reason, self.source.name, origin, record.key, detail, record=record)
        source = row.get("source")
        if isinstance(source, str):
            record.meta["finevision_source"] = source
        record.meta.update(found)
        return item


def is_rating(value: Any) -> bool:
    """An integer from 1 to 5 (a bool is not one)."""
    return type(value) is int and 1 <= value <= 5


def rating_meta(row: dict[str, Any], turns: int, nulls_unrated: bool = False) -> dict[str, Any] | tuple[str, str]:
    """The meta of a row's ratings (``ratings`` per turn, ``<axis>_min``), or (drop reason, detail).
    ``nulls_unrated``: a null turn rating is an unrated turn (the minimum is over the rated ones), not bad input."""
    per_turn: dict[str, list[int | None]] = {}
    minima: dict[str, int | None] = {}
    for axis in AXES:
        values, given = row.get(f"{axis}_ratings"), row.get(f"{axis}_min")
        if given is not None and not is_rating(given):
            return f"invalid_rating:{axis}", f"{axis}_min is {given!r}"[:300]
        if values is None:
            if given is not None:
                minima[axis] = given
            continue
        if not isinstance(values, list):
            return f"invalid_rating:{axis}", f"{axis}_ratings is a {type(values).__name__}, not a list"
        if len(values) != turns:
            return f"ratings_not_per_turn:{axis}", f"{len(values)} {axis} ratings for {turns} turns"
        bad = [v for v in values if not is_rating(v) and not (nulls_unrated and v is None)]
        if bad:
            return f"invalid_rating:{axis}", f"{axis}_ratings holds {bad[0]!r}: {values!r}"[:300]
        rated = [v for v in values if v is not None]
        low = min(rated) if rated else None
        if given is not None and given != low:
            return f"rating_min_mismatch:{axis}", f"{axis}_min is {given} but the turns' ratings are {values}"[:300]
        per_turn[axis], minima[axis] = list(values), low
    meta: dict[str, Any] = {"ratings": per_turn} if per_turn else {}
    meta.update({f"{axis}_min": value for axis, value in minima.items()})
    return meta
