"""``clip_score``: the cosine of a CLIP/SigLIP model's image and text embeddings (DataComp's CLIP score), as
the sidecar score ``score``. A turn scores its best-matching image; an sft sample scores its first turn or the
mean of all its turns. Samples without images get no score and are kept. ``keep_top_fraction`` is carried out
by a ``keep_top`` step the recipe adds after the record steps."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from curation.recipe.models import ClipScoreStep
from curation.sample import Sample
from curation.steps.contract import StepContext
from curation.steps.model_stage import MODEL_DROP_REASONS, ModelStep, cosine, rounded, turn_texts

BELOW_MIN = "clip_score_below_min"


class ClipScore(ModelStep):
    config = ClipScoreStep
    drop_reasons: ClassVar[dict[str, str]] = {**MODEL_DROP_REASONS, BELOW_MIN: "image-text cosine below min_score"}
    kinds = frozenset({"pair", "sft"})
    needs_text = True

    def __init__(self, cfg: ClipScoreStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.score = cfg.score_names(context.label)[0]

    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        images = self.stage.images(samples)
        texts = [self._texts(s) for s in samples]
        flat = [t for ts in texts for t in ts]
        vectors = self.stage.texts(flat)
        out: list[Sample | str] = []
        row = 0
        for sample, image_rows, own in zip(samples, images, texts, strict=True):
            text_rows = vectors[row : row + len(own)]
            row += len(own)
            if isinstance(image_rows, str):
                out.append(image_rows)
                continue
            if len(image_rows) == 0 or len(own) == 0:
                self.unscored += 1
                out.append(sample)
                continue
            # (turns, images) cosines; a turn scores its best image
            per_turn = cosine(text_rows[:, None, :], image_rows[None, :, :]).max(axis=1)
            score = rounded(float(np.mean(per_turn)))
            sample.record.meta[self.score] = score
            below = self.cfg.min_score is not None and score < self.cfg.min_score
            out.append(BELOW_MIN if below else sample)
        return out

    def _texts(self, sample: Sample) -> list[str]:
        texts = turn_texts(sample.record, self.cfg.text_field)
        return texts[:1] if self.cfg.turns == "first" else texts
