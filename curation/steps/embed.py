"""``embed``: image and/or text embeddings of every sample, stored beside each shard as
``<shard>.emb.<model>.image.npy`` (one row per image) and ``<shard>.emb.<model>.text.npy`` (one row per
sample: the caption, or the sft record's first turn). Read them with ``shards.embeddings``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from curation.recipe.models import EmbedStep
from curation.sample import Sample
from curation.steps.contract import BatchedStep, Resources, StepContext
from curation.steps.model_stage import (
    MODEL_DROP_REASONS,
    RUN_COUNTS,
    ModelStage,
    check_model,
    model_config,
    model_identity,
    model_resources,
    turn_texts,
)


class Embed(BatchedStep):
    config = EmbedStep
    drop_reasons: ClassVar[dict[str, str]] = MODEL_DROP_REASONS
    run_only_report_keys: ClassVar[tuple[str, ...]] = RUN_COUNTS

    def __init__(self, cfg: EmbedStep, context: StepContext) -> None:
        super().__init__(cfg, context)
        self.stage = ModelStage(cfg.model, model_config(context.models, cfg.model))
        self.batch_size = self.stage.cfg.batch_size

    @classmethod
    def kind_error(cls, cfg: EmbedStep, kind: str) -> str | None:
        if cfg.text and kind not in ("pair", "sft"):
            return "embeds the text of pair or sft records (text: true)"
        if kind == "pdf":
            return "needs records with images (pdf pages are images after pdf_to_transcription)"
        return None

    @classmethod
    def resources(cls, cfg: EmbedStep, models: Mapping[str, Any]) -> Resources:
        return model_resources(model_config(models, cfg.model))

    @classmethod
    def check_inputs(cls, cfg: EmbedStep, where: str, models: Mapping[str, Any]) -> None:
        check_model(model_config(models, cfg.model), f"{where} (model {cfg.model})", needs_text=cfg.text)

    @classmethod
    def input_identity(cls, cfg: EmbedStep, models: Mapping[str, Any]) -> dict[str, Any]:
        return model_identity(model_config(models, cfg.model))

    def stored_embeddings(self) -> dict[str, int]:
        wanted = [m for m, on in (("image", self.cfg.image), ("text", self.cfg.text)) if on]
        return {f"{self.cfg.model}.{m}": self.stage.dim for m in wanted}

    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        out: list[Sample | str] = list(samples)
        if self.cfg.image:
            for i, result in enumerate(self.stage.images(samples)):
                if isinstance(result, str):
                    out[i] = result
        if self.cfg.text:
            kept = [(i, s) for i, s in enumerate(samples) if not isinstance(out[i], str)]
            firsts = [(turn_texts(s.record, self.cfg.text_field) or [""])[0] for _, s in kept]
            vectors = self.stage.texts(firsts)
            for row, (_, sample) in enumerate(kept):
                sample.embeddings[f"{self.cfg.model}.text"] = vectors[row : row + 1]
        return out

    def report(self) -> dict[str, Any]:
        return self.stage.report()

    @classmethod
    def throughput(cls, report: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        return model_throughput(report, seconds)

    def close(self) -> None:
        self.stage.close()


def model_throughput(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Images and texts per second of the whole run and of the model alone; the line ``curate build`` prints."""
    images = report.get("images_embedded", 0)
    model = report.get("model_seconds") or 0.0
    rates = {
        "images_embedded": images,
        "images_cached": report.get("images_cached", 0),
        "texts_embedded": report.get("texts_embedded", 0),
        "texts_cached": report.get("texts_cached", 0),
        "images_per_s": round(images / seconds, 1) if seconds else None,
        "model_images_per_s": round(images / model, 1) if model else None,
    }
    rates["summary"] = (
        f"{images:,} images embedded ({rates['images_cached']:,} from the cache), "
        f"{rates['texts_embedded']:,} texts ({rates['texts_cached']:,} cached)"
        + (f", {rates['images_per_s']:,} images/s" if rates["images_per_s"] else "")
    )
    return rates
