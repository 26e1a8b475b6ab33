"""``clip_score``: the cosine of a CLIP/SigLIP model's image and text embeddings (DataComp's CLIP score), as
the sidecar score ``score``. A turn scores its best-matching image; an sft sample scores its first turn or the
mean of all its turns. Samples without images get no score and are kept. ``keep_top_fraction`` is carried out
by a ``keep_top`` step the recipe adds after the record steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from curation.recipe.models import ClipScoreStep
from curation.sample import Sample
from curation.steps.contract import BatchedStep, Resources, StepContext
from curation.steps.embed import model_throughput
from curation.steps.model_stage import (
    MODEL_DROP_REASONS,
    RUN_COUNTS,
    ModelStage,
    check_model,
    cosine,
    model_config,
    model_identity,
    model_resources,
    rounded,
    turn_texts,
)

BELOW_MIN = "clip_score_below_min"


class ClipScore(BatchedStep):
    config = ClipScoreStep
    drop_reasons: ClassVar[dict[str, str]] = {**MODEL_DROP_REASONS, BELOW_MIN: "image-text cosine below min_score"}
    kinds = frozenset({"pair", "sft"})
    run_only_report_keys: ClassVar[tuple[str, ...]] = RUN_COUNTS

    def __init__(self, cfg: ClipScoreStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.stage = ModelStage(cfg.model, model_config(context.models, cfg.model))
        self.batch_size = self.stage.cfg.batch_size
        self.score = cfg.score_names(context.label)[0]
        self.unscored = 0

    @classmethod
    def resources(cls, cfg: ClipScoreStep, models: Mapping[str, Any]) -> Resources:
        return model_resources(model_config(models, cfg.model))

    @classmethod
    def check_inputs(cls, cfg: ClipScoreStep, where: str, models: Mapping[str, Any]) -> None:
        check_model(model_config(models, cfg.model), f"{where} (model {cfg.model})", needs_text=True)

    @classmethod
    def input_identity(cls, cfg: ClipScoreStep, models: Mapping[str, Any]) -> dict[str, Any]:
        return model_identity(model_config(models, cfg.model))

    @classmethod
    def scores(cls, cfg: ClipScoreStep, label: str) -> list[str]:
        return cfg.score_names(label)

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

    def report(self) -> dict[str, Any]:
        return {**self.stage.report(), "unscored": self.unscored}

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        return model_throughput(report, seconds)

    def close(self) -> None:
        self.stage.close()
