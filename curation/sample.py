"""What flows through a build: a record with its probed images, or a drop with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas import Record
from shards import ImageInfo


@dataclass(slots=True)
class Sample:
    record: Record
    origin: str
    infos: list[ImageInfo] = field(default_factory=list)
    image_hashes: dict[str, list[int]] = field(default_factory=dict)  # method -> signed 64-bit hash per image


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
