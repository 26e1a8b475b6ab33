"""The model steps on sft records, one batch at a time: per-turn CLIP scores (first turn, or the mean of all;
a turn takes its best image), samples without images kept unscored, classifier scores combined over images,
and vectors reused between steps of one model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.recipe.models import ClipScoreStep, EmbeddingClassifierStep, EmbedStep, ModelConfig
from curation.sample import Sample
from curation.steps.classifier import EmbeddingClassifier
from curation.steps.clip_score import ClipScore
from curation.steps.contract import StepContext
from curation.steps.embed import Embed
from curation.steps.model_stage import cosine
from schemas import SftRecord, Turn
from shards import probe_image
from tests.model_data import jpeg, smooth_image

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ModelConfig]:
    from curation.models.tiny import make_head, make_tiny_clip

    root = tmp_path_factory.mktemp("m")
    clip = make_tiny_clip(root / "clip")
    make_head(root / "head.safetensors", 32, layout="linear")
    return {"clip": ModelConfig(path=str(clip), batch_size=4, cache=False)}


def _sample(key: str, n_images: int, turns: list[tuple[str, str]]) -> Sample:
    images = [jpeg(smooth_image(hash(key) % 1000 + i)) for i in range(n_images)]
    record = SftRecord(key=key, source="s", images=images, turns=[Turn(user=u, assistant=a) for u, a in turns])
    return Sample(record, "o", [probe_image(b) for b in images])


def _context(label: str, models: dict, tmp: Path) -> StepContext:
    return StepContext(label, tmp, models=models)


def test_clip_score_of_turns(models, tmp_path):
    turns = [("what is it", "a red dog"), ("and here", "a blue boat")]
    two = _sample("two", 2, turns)
    text_only = _sample("text", 0, turns)
    embed = Embed(EmbedStep(step="embed", model="clip", text=True), _context("embed", models, tmp_path))
    embed.process_batch([two, text_only])
    images = two.embeddings["clip.image"]
    assert images.shape == (2, 32) and text_only.embeddings["clip.image"].shape == (0, 32)
    texts = embed.stage.texts(["a red dog", "a blue boat"])
    assert np.array_equal(two.embeddings["clip.text"][0], texts[0])  # the first turn's answer
    per_turn = cosine(texts[:, None, :], images[None, :, :]).max(axis=1)

    first = ClipScore(ClipScoreStep(step="clip_score", model="clip"), _context("clip_score", models, tmp_path))
    out = first.process_batch([two, text_only])
    assert out == [two, text_only]
    assert two.record.meta["clip_score"] == pytest.approx(float(per_turn[0]), abs=1e-6)
    assert "clip_score" not in text_only.record.meta and first.report()["unscored"] == 1
    assert first.report()["images_embedded"] == 0  # the embed step's vectors were reused

    every = ClipScore(
        ClipScoreStep(step="clip_score", model="clip", turns="all", score="all_turns"),
        _context("all_turns", models, tmp_path),
    )
    every.process_batch([two])
    assert two.record.meta["all_turns"] == pytest.approx(float(per_turn.mean()), abs=1e-6)


def test_classifier_combines_the_scores_of_a_samples_images(models, tmp_path):
    head = {"path": str(Path(models["clip"].path).parent / "head.safetensors")}
    sample = _sample("imgs", 3, [("q", "a")])
    scores = {}
    for combine in ("mean", "min", "max", "first"):
        cfg = EmbeddingClassifierStep(step="embedding_classifier", model="clip", head=head, combine=combine)
        step = EmbeddingClassifier(cfg, _context("c", models, tmp_path))
        step.process_batch([sample])
        scores[combine] = sample.record.meta["c"]
    assert scores["min"] <= scores["mean"] <= scores["max"]
    assert scores["min"] < scores["max"]
    cfg = EmbeddingClassifierStep(step="embedding_classifier", model="clip", head=head, max=scores["mean"] - 1e-3)
    assert EmbeddingClassifier(cfg, _context("c", models, tmp_path)).process_batch([sample]) == [
        "classifier_score_above_max"
    ]
