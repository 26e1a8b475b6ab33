"""Kind conversions."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from curation.recipe.steps import PairToSftStep
from curation.sample import Sample
from curation.steps.contract import RecordStep
from schemas import PairRecord, SftRecord, Turn


class PairToSft(RecordStep):
    """A caption becomes a one-turn conversation: the prompt asks, the caption answers."""

    config = PairToSftStep
    converts: ClassVar[tuple[str, str] | None] = ("pair", "sft")

    def __call__(self, sample: Sample) -> Sample | str:
        r = sample.record
        if not isinstance(r, PairRecord):
            return sample
        sft = SftRecord.model_construct(
            key=r.key,
            source=r.source,
            meta=r.meta,
            images=[r.image],
            turns=[Turn.model_construct(user=self.cfg.prompt, assistant=r.caption)],
        )
        return dataclasses.replace(sample, record=sft)  # same images: their hashes and embeddings stay
