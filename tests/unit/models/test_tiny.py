"""The tiny builders: real processors load offline, and the downsample embedder separates copies from
unrelated images (a dedup test built on it can fail)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from curation.models import ModelSpec, load_embedder
from tests.unit.models.pictures import encode, photo


def test_processors_load_with_auto_classes(clip_dir: Path, siglip_dir: Path):
    from transformers import AutoProcessor, CLIPModel, SiglipModel

    clip = AutoProcessor.from_pretrained(clip_dir, local_files_only=True)
    assert type(clip).__name__ == "CLIPProcessor"
    ids = clip.tokenizer(["a dog"])["input_ids"][0]
    assert ids[0] == clip.tokenizer.bos_token_id and ids[-1] == clip.tokenizer.eos_token_id
    siglip = AutoProcessor.from_pretrained(siglip_dir, local_files_only=True)
    assert type(siglip).__name__ == "SiglipProcessor"
    enc = siglip.tokenizer(["a dog"], padding="max_length", max_length=16)
    assert list(enc) == ["input_ids"] and enc["input_ids"][0][2] == siglip.tokenizer.eos_token_id
    assert CLIPModel.from_pretrained(clip_dir, local_files_only=True).config.projection_dim == 32
    assert SiglipModel.from_pretrained(siglip_dir, local_files_only=True).config.vision_config.image_size == 32


def test_builders_are_deterministic(tmp_path: Path, clip_dir: Path):
    from curation.models.tiny import make_tiny_clip

    again = make_tiny_clip(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (clip_dir / "model.safetensors").read_bytes()
    assert load_embedder(ModelSpec(str(again))).fingerprint == load_embedder(ModelSpec(str(clip_dir))).fingerprint


def _copies(im: Image.Image) -> dict[str, bytes]:
    w, h = im.size
    dx, dy = w // 40, h // 40  # 2.5% off each side: 5% of each dimension
    return {
        "half size": encode(im.resize((w // 2, h // 2), Image.Resampling.BILINEAR), quality=90),
        "jpeg q70": encode(im, quality=70),
        "crop 5%": encode(im.crop((dx, dy, w - dx, h - dy)), quality=90),
        "crop 5% one edge": encode(im.crop((0, 0, w - w // 20, h)), quality=90),
        "brighter 10%": encode(ImageEnhance.Brightness(im).enhance(1.1), quality=90),
        "png": encode(im, "PNG"),
    }


def test_downsample_embedder_keeps_copies_close_and_others_far(downsample_path: Path):
    embedder = load_embedder(ModelSpec(str(downsample_path), image_size=64))
    originals = [photo(seed) for seed in range(24)]
    base = embedder.embed_images([encode(im, quality=90) for im in originals]).vectors
    worst_copy = 1.0
    for i, im in enumerate(originals):
        copies = _copies(im)
        vectors = embedder.embed_images(list(copies.values())).vectors
        sims = vectors @ base[i]
        assert sims.min() >= 0.95, dict(zip(copies, sims.round(3), strict=True))
        worst_copy = min(worst_copy, float(sims.min()))
    unrelated = (base @ base.T)[np.triu_indices(len(originals), 1)]
    assert np.median(np.abs(unrelated)) < 0.3
    assert unrelated.max() < worst_copy - 0.1  # every copy is nearer its original than any two originals
