"""What flows through a build: a record with its probed images, or a drop with its reason."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import Record
from shards import ImageInfo


@dataclass(slots=True)
class Sample:
    record: Record
    origin: str
    infos: list[ImageInfo] = field(default_factory=list)
    image_hashes: dict[str, list[int]] = field(default_factory=dict)  # method -> signed 64-bit hash per image
    # embedding name -> float16 rows (one per image, or one per sample), to store beside the shard
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    embedded_images: tuple[str, ...] | None = None  # the image sha256s the image embeddings were computed from

    def stored(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The embeddings ``names`` to store; image embeddings of images a later step replaced are a recipe bug."""
        names = list(names)
        if names and self.embedded_images is not None:
            now = tuple(i.sha256 for i in self.infos)
            if now != self.embedded_images:
                raise RuntimeError(
                    f"sample {self.record.key!r}: its images changed after they were embedded; put the embed step "
                    "after the steps that change images (e.g. pdf_to_transcription)"
                )
        missing = [n for n in names if n not in self.embeddings]
        if missing:
            raise RuntimeError(f"sample {self.record.key!r} reached the writer without its embeddings {missing}")
        return {n: self.embeddings[n] for n in names}


@dataclass(slots=True)
class Drop:
    """A sample that did not make it, with the reason (a stable slug) and what is known of it."""

    reason: str
    source: str
    origin: str
    key: str | None = None
    detail: str = ""
    record: Record | None = None
    raw: dict[str, Any] | None = None
    count: int = 1  # >1: a bulk drop of input rows that never became samples (e.g. LAION metadata filters)
