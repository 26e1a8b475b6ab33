"""Kind conversions."""

from __future__ import annotations

from curation.sample import Sample
from schemas import PairRecord, SftRecord, Turn


class PairToSft:
    """A caption becomes a one-turn conversation: the prompt asks, the caption answers."""

    def __init__(self, cfg) -> None:
        self.prompt = cfg.prompt

    def __call__(self, sample: Sample) -> Sample | str:
        r = sample.record
        if not isinstance(r, PairRecord):
            return sample
        sft = SftRecord.model_construct(
            key=r.key,
            source=r.source,
            meta=r.meta,
            images=[r.image],
            turns=[Turn.model_construct(user=self.prompt, assistant=r.caption)],
        )
        return Sample(sft, sample.origin, sample.infos)
