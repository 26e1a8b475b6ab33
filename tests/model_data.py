"""Inputs for the model-step tests: image-text pairs in the jsonl + image folder layout with planted
transformed copies (resized, re-encoded, cropped, brightened) and a benchmark folder holding altered copies of
some training images, plus the tiny models, built offline."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from curation.models.tiny import make_downsample_embedder, make_head, make_tiny_clip


def smooth_image(seed: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A random smooth colour field: distinct seeds are far apart for the downsample embedder."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def altered(im: Image.Image, how: str) -> Image.Image:
    w, h = im.size
    if how == "resize":
        return im.resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.BILINEAR)
    if how == "crop":
        return im.crop((w // 25, h // 25, w - w // 25, h - h // 25))
    if how == "bright":
        return ImageEnhance.Brightness(im).enhance(1.08)
    return im  # "jpeg": the same pixels, re-encoded at a lower quality by the caller


HOWS = ("resize", "jpeg", "crop", "bright")


@dataclass
class PairInputs:
    root: Path
    captions: Path
    images: Path
    benchmark: Path
    copies: dict[str, str] = field(default_factory=dict)  # copy key -> the original's key
    contaminated: set[str] = field(default_factory=set)  # keys whose image the benchmark holds (altered)
    corrupt: set[str] = field(default_factory=set)  # keys whose image the model cannot read


def make_pair_inputs(root: Path, n: int = 60, n_copies: int = 8, n_contaminated: int = 4, seed: int = 0) -> PairInputs:
    """``n`` originals, then ``n_copies`` altered copies of earlier originals (keys after theirs), and a
    benchmark folder with altered copies of ``n_contaminated`` other originals."""
    rng = random.Random(seed)
    images = root / "images"
    bench = root / "benchmark"
    images.mkdir(parents=True, exist_ok=True)
    bench.mkdir(parents=True, exist_ok=True)
    rows = []
    originals: list[tuple[str, Image.Image]] = []
    for i in range(n):
        im = smooth_image(seed * 100_000 + i)
        key = f"p{i:04d}"
        (images / f"{key}.jpg").write_bytes(jpeg(im))
        rows.append(
            {"id": key, "file": f"{key}.jpg", "text": f"a photo of a {rng.choice(COLOURS)} {rng.choice(THINGS)}"}
        )
        originals.append((key, im))
    inputs = PairInputs(root, root / "captions.jsonl", images, bench)
    copied = rng.sample(range(n // 2), n_copies)
    for j, i in enumerate(copied):
        key, im = originals[i]
        how = HOWS[j % len(HOWS)]
        copy_key = f"q{j:04d}"
        (images / f"{copy_key}.jpg").write_bytes(jpeg(altered(im, how), 60 if how == "jpeg" else 90))
        rows.append({"id": copy_key, "file": f"{copy_key}.jpg", "text": rows[i]["text"] + " again"})
        inputs.copies[copy_key] = key
    others = [i for i in range(n) if i not in copied and i >= n // 2]
    for j, i in enumerate(rng.sample(others, n_contaminated)):
        key, im = originals[i]
        (bench / f"bench_{j:03d}.jpg").write_bytes(jpeg(altered(im, HOWS[j % len(HOWS)]), 70))
        inputs.contaminated.add(key)
    for j in range(5):  # unrelated benchmark images
        (bench / f"other_{j:03d}.jpg").write_bytes(jpeg(smooth_image(10_000_000 + j)))
    inputs.captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return inputs


COLOURS = ("red", "blue", "green", "yellow", "black", "white")
THINGS = ("dog", "cat", "bird", "horse", "house", "car", "boat", "tree")


@dataclass(frozen=True)
class TinyModels:
    clip: Path
    sscd: Path
    head: Path


def make_models(root: Path) -> TinyModels:
    clip = make_tiny_clip(root / "clip")
    sscd = make_downsample_embedder(root / "sscd.pt")
    from transformers import CLIPConfig

    dim = CLIPConfig.from_pretrained(clip).projection_dim
    head = make_head(root / "aesthetic.safetensors", dim, layout="mlp", hidden=(16, 8))
    return TinyModels(clip, sscd, head)


def pairs_recipe(inputs: PairInputs, models: TinyModels, **extra) -> dict:
    """embed (sscd images, clip images + texts) -> clip_score top half -> classifier -> semantic dedup ->
    embedding decontamination, over the pairs."""
    recipe = {
        "kind": "build",
        "name": "pairs",
        "sources": [
            {
                "name": "pairs",
                "reader": "jsonl",
                "path": str(inputs.captions),
                "image_root": str(inputs.images),
                "record": "pair",
                "fields": {"key": "id", "image": "file", "caption": "text"},
                "partition_size": 20,
            }
        ],
        "models": {
            "sscd": {"path": str(models.sscd), "kind": "torchscript", "image_size": 64, "batch_size": 16},
            "clip": {"path": str(models.clip), "batch_size": 16},
        },
        "steps": [
            {"step": "embed", "model": "sscd"},
            {"step": "embed", "model": "clip", "text": True, "name": "embed_clip"},
            {"step": "clip_score", "model": "clip"},
            {
                "step": "embedding_classifier",
                "model": "clip",
                "score": "aesthetic",
                "head": {"path": str(models.head), "layout": "mlp", "activation": "relu"},
            },
            {"step": "semantic_dedup", "model": "sscd", "threshold": 0.95},
            {
                "step": "embedding_decontaminate",
                "model": "sscd",
                "threshold": 0.95,
                "benchmarks": [{"name": "bench", "images": str(inputs.benchmark)}],
            },
        ],
        "output": {"kind": "pair", "max_samples_per_shard": 25, "rejects": True},
    }
    recipe.update(extra)
    return recipe
