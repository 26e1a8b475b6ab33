"""``embedding_classifier``: a classifier head (linear or a small MLP, from a state dict file) over each
sample's image embeddings -- e.g. LAION's aesthetic predictor over ViT-L/14 embeddings, or an NSFW head -- as
the sidecar score ``score``; samples outside [min, max] are dropped, samples without images are kept unscored."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curation.errors import CurationError
from curation.recipe.models import EmbeddingClassifierStep
from curation.sample import Sample
from curation.steps.contract import StepContext
from curation.steps.model_stage import MODEL_DROP_REASONS, ModelStep, rounded

BELOW, ABOVE = "classifier_score_below_min", "classifier_score_above_max"
_COMBINE = {"mean": np.mean, "min": np.min, "max": np.max, "first": lambda s: s[0]}


def head_spec(cfg: EmbeddingClassifierStep) -> Any:
    from curation.models.heads import HeadSpec

    h = cfg.head
    return HeadSpec(
        path=h.path,
        layout=h.layout,
        activation=h.activation,
        normalize_input=h.normalize_input,
        output=h.output,
        output_index=h.output_index,
    )


class EmbeddingClassifier(ModelStep):
    config = EmbeddingClassifierStep
    drop_reasons: ClassVar[dict[str, str]] = {
        **MODEL_DROP_REASONS,
        BELOW: "the classifier's score is below min",
        ABOVE: "the classifier's score is above max",
    }
    kinds = frozenset({"pair", "sft", "interleaved"})

    def __init__(self, cfg: EmbeddingClassifierStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        from curation.models.heads import load_head

        self.head = load_head(head_spec(cfg))
        self.score = cfg.score_names(context.label)[0]

    @classmethod
    def check_inputs(cls, cfg: EmbeddingClassifierStep, where: str, models: Mapping[str, Any]) -> None:
        super().check_inputs(cfg, where, models)
        from curation.models.heads import load_head

        try:
            load_head(head_spec(cfg))
        except CurationError as exc:
            raise CurationError(f"{where}.head: {exc}") from None

    @classmethod
    def input_identity(cls, cfg: EmbeddingClassifierStep, models: Mapping[str, Any]) -> dict[str, Any]:
        from curation.models.heads import load_head

        return {**super().input_identity(cfg, models), "head_fingerprint": load_head(head_spec(cfg)).fingerprint}

    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        images = self.stage.images(samples)
        if self.head.in_dim != self.stage.dim:
            raise CurationError(
                f"{self.context.label}: the head {Path(self.cfg.head.path).name} takes {self.head.in_dim}-d "
                f"embeddings, model {self.cfg.model} gives {self.stage.dim}-d"
            )
        out: list[Sample | str] = []
        for sample, rows in zip(samples, images, strict=True):
            if isinstance(rows, str):
                out.append(rows)
                continue
            if len(rows) == 0:
                self.unscored += 1
                out.append(sample)
                continue
            score = rounded(float(_COMBINE[self.cfg.combine](self.head(rows.astype(np.float32)))))
            sample.record.meta[self.score] = score
            if self.cfg.min is not None and score < self.cfg.min:
                out.append(BELOW)
            elif self.cfg.max is not None and score > self.cfg.max:
                out.append(ABOVE)
            else:
                out.append(sample)
        return out
