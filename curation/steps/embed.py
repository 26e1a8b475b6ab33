"""``embed``: image and/or text embeddings of every sample, stored beside each shard as
``<shard>.emb.<model>.image.npy`` (one row per image) and ``<shard>.emb.<model>.text.npy`` (one row per
sample: the caption, or the sft record's first turn). Read them with ``shards.embeddings``."""

from __future__ import annotations

from typing import Any

from curation.recipe.models import EmbedStep
from curation.sample import Sample
from curation.steps.model_stage import ModelStep, turn_texts


class Embed(ModelStep):
    config = EmbedStep

    @classmethod
    def kind_error(cls, cfg: EmbedStep, kind: str) -> str | None:
        if cfg.text and kind not in ("pair", "sft"):
            return "embeds the text of pair or sft records (text: true)"
        if kind == "pdf":
            return "needs records with images (pdf pages are images after pdf_to_transcription)"
        return None

    def stored_embeddings(self) -> dict[str, int]:
        wanted = [m for m, on in (("image", self.cfg.image), ("text", self.cfg.text)) if on]
        return {f"{self.cfg.model}.{m}": self.stage.dim for m in wanted}

    def report(self) -> dict[str, Any]:
        return self.stage.report()  # it scores nothing

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
