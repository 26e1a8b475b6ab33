"""What a model stage asks for (``ModelSpec``) and what an image batch gives back (``EmbedResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["auto", "clip", "siglip", "torchscript", "open_clip"]
KINDS: tuple[str, ...] = ("auto", "clip", "siglip", "torchscript", "open_clip")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """A local model and how to run it. Hashable: the loaded model is memoized per process on it."""

    path: str
    kind: Kind = "auto"
    device: str = "auto"
    dtype: str = "auto"
    arch: str | None = None  # open_clip architecture name (e.g. "ViT-B-32")
    image_size: int | None = None  # torchscript: square input side (required for torchscript)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # torchscript normalisation (SSCD uses ImageNet's)
    std: tuple[float, float, float] = IMAGENET_STD
    max_image_pixels: int = 50_000_000  # decoded size cap, checked on the header before any pixel is decoded
    # decode large JPEGs at libjpeg's 1/2-1/8 scales (sides >= 2x the model's input): much faster, but the
    # pixels (so the vectors) differ slightly from the model's own preprocessing of a full decode
    fast_jpeg_decode: bool = False


@dataclass
class EmbedResult:
    """One batch's vectors: rows in input order of the images that decoded; the others in ``failed``."""

    vectors: np.ndarray  # (n_ok, dim) float32, L2-normalised rows
    failed: dict[int, str] = field(default_factory=dict)  # input index -> one-line reason

    def ok_indices(self, n: int) -> list[int]:
        """Input indices (of a batch of ``n``) that have a row in ``vectors``, in row order."""
        return [i for i in range(n) if i not in self.failed]
