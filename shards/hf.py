"""Explicit ``datasets.Features`` for our shards, for ``load_dataset("webdataset", ..., features=...)``.

Without them, ``datasets`` infers column types from the first five samples of the first shard; that
fails when all five are text-only ``sft`` samples (an empty image list has no item type) and later
samples have images. With them, every dataset of a kind loads the same way.
"""

from __future__ import annotations

from typing import Any


def hf_features(kind: str, pair_image_format: str = "jpg", decode_images: bool = True) -> Any:
    """The ``datasets.Features`` of a shard of ``kind`` (``pair`` images as ``pair_image_format``)."""
    import datasets as hf

    string = hf.Value("string")
    common = {"kind": string, "meta": string, "source": string}
    if kind == "pair":
        members: dict[str, Any] = {
            pair_image_format: hf.Image(decode=decode_images),
            "json": common,
            "txt": string,
        }
    elif kind == "sft":
        turns = hf.List({"assistant": string, "user": string})
        members = {"images.mp": hf.List(hf.Value("binary")), "json": {**common, "turns": turns}}
    elif kind == "interleaved":
        members = {"images.mp": hf.List(hf.Value("binary")), "json": {**common, "texts": hf.List(string)}}
    elif kind == "pdf":
        line = {"bbox": hf.List(hf.Value("float64")), "text": string}
        members = {"json": {**common, "pages": hf.List({"lines": hf.List(line)})}, "pdf": hf.Value("binary")}
    else:
        raise ValueError(f"unknown record kind {kind!r}")
    return hf.Features({**members, "__key__": string, "__url__": string})
