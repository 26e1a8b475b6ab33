"""Synthetic test images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-ish RGB image: a smooth colour field, a few discs, grain."""
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(15, 70)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        base[mask] = 0.3 * base[mask] + 0.7 * rng.uniform(0, 255, 3)
    base += rng.normal(0, 4, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpegs(n: int, start: int = 0, size: tuple[int, int] = (80, 60)) -> list[bytes]:
    return [encode(photo(start + i, size), quality=90) for i in range(n)]
