"""Embeddings stored per shard, beside its sidecar: ``<stem>.emb.<name>.npy``, float16, one row per sample
(``per: sample``, e.g. a caption's text embedding) or one row per image in sample order (``per: image``:
sample ``i``'s images are the ``n_images[i]`` rows after those of samples ``0..i-1``).

Plain ``.npy`` (not parquet) so a global step or a user memory-maps them (``np.load(mmap_mode="r")``) and
never holds a whole build's vectors. The shard's stats file and the manifest record each file's sha256, rows
and dim; ``curate verify`` checks them. Read them with :func:`embeddings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from shards.atomic import sha256_file, tmp_path
from shards.manifest import EmbeddingFile, Per, read_manifest

DTYPE = np.float16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*\.(image|text)$")
MAX_DIM = 1 << 16  # bounded before a file's rows are read: no model of the field is wider


def embedding_file_name(stem: str, name: str) -> str:
    return f"{stem}.emb.{name}.npy"


def per_of(name: str) -> Per:
    """``<model>.image`` names hold one row per image, ``<model>.text`` one row per sample."""
    return "image" if name.endswith(".image") else "sample"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"embedding name {name!r} must look like <model>.image or <model>.text")
    return name


def write_embeddings(directory: Path, stem: str, name: str, vectors: np.ndarray) -> EmbeddingFile:
    """Write ``vectors`` (rows, dim) as float16 atomically (temporary name, fsync, rename)."""
    if vectors.ndim != 2:
        raise ValueError(f"embeddings {name!r}: want a (rows, dim) array, got shape {vectors.shape}")
    path = directory / embedding_file_name(stem, check_name(name))
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(vectors, dtype=DTYPE), allow_pickle=False)
    sha256 = sha256_file(tmp, fsync=True)
    os.replace(tmp, path)
    return EmbeddingFile(
        file=path.name, sha256=sha256, rows=int(vectors.shape[0]), dim=int(vectors.shape[1]), per=per_of(name)
    )


def load_embeddings(path: Path, mmap: bool = True) -> np.ndarray:
    """A float16 (rows, dim) array from one file (memory-mapped by default); a file that is not one is an error."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
            )
    except (OSError, ValueError) as exc:
        raise EmbeddingsError(f"{path}: not an embeddings file ({exc})") from None
    if dtype != np.dtype(DTYPE) or len(shape) != 2 or fortran or not 0 < shape[1] <= MAX_DIM:
        raise EmbeddingsError(f"{path}: want a C-ordered (rows, dim) float16 array, got {dtype} {shape}")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


class EmbeddingsError(ValueError):
    """An embeddings file is missing, unreadable, or does not match its shard."""


def rows_per_sample(per: Per, n_images: list[int]) -> list[int]:
    return list(n_images) if per == "image" else [1] * len(n_images)


def select_rows(vectors: np.ndarray, per: Per, n_images: list[int], keep: list[bool]) -> np.ndarray:
    """The rows of the kept samples (a shard rewritten without some samples keeps their embeddings aligned)."""
    counts = rows_per_sample(per, n_images)
    mask = np.repeat(np.asarray(keep, dtype=bool), counts)
    if mask.shape[0] != vectors.shape[0]:
        raise EmbeddingsError(f"{mask.shape[0]} rows expected from the sidecar, the file has {vectors.shape[0]}")
    return vectors[mask]


@dataclass(frozen=True)
class DatasetEmbeddings:
    """One name's embeddings over a whole dataset, in dataset order: ``vectors[r]`` belongs to the sample
    ``keys[r]`` (its image number ``image[r]`` for per-image embeddings) of shard ``shards[r]``."""

    name: str
    per: Per
    vectors: np.ndarray  # (rows, dim) float16
    keys: list[str]
    image: np.ndarray  # (rows,) int32
    shards: list[str]


def embeddings(dataset: str | Path, name: str) -> DatasetEmbeddings:
    """Read embeddings ``name`` (e.g. ``"clip.image"``) of a built dataset: every shard's file, checked against
    its manifest entry, joined in dataset order. For builds too large to hold, use :func:`iter_embeddings`."""
    parts = list(iter_embeddings(dataset, name))
    dim = parts[0][3].shape[1] if parts else 1
    vectors = np.concatenate([v for *_, v in parts]) if parts else np.zeros((0, dim), DTYPE)
    keys: list[str] = []
    image: list[np.ndarray] = []
    shards: list[str] = []
    per = per_of(name)
    for shard, sidecar_keys, n_images, _ in parts:
        counts = rows_per_sample(per, n_images)
        for key, n in zip(sidecar_keys, counts, strict=True):
            keys.extend([key] * n)
            image.append(np.arange(n, dtype=np.int32))
        shards.extend([shard] * sum(counts))
    return DatasetEmbeddings(
        name, per, vectors, keys, np.concatenate(image) if image else np.zeros(0, np.int32), shards
    )


def iter_embeddings(dataset: str | Path, name: str) -> Iterator[tuple[str, list[str], list[int], np.ndarray]]:
    """(shard name, sample keys, images per sample, memory-mapped float16 vectors) of each shard, in order."""
    directory = Path(dataset)
    manifest = read_manifest(directory)
    names = sorted({n for s in manifest.shards for n in (s.embeddings or {})})
    if manifest.shards and name not in names:
        have = ", ".join(names) or "none (the recipe has no embed step)"
        raise EmbeddingsError(f"{directory}: no embeddings named {name!r}; it has: {have}")
    for shard in manifest.shards:
        entry = (shard.embeddings or {}).get(name)
        if entry is None:
            raise EmbeddingsError(f"{directory}: shard {shard.name} has no embeddings {name!r}; run `curate verify`")
        table = pq.read_table(directory / shard.sidecar, columns=["key", "n_images"])
        keys = table.column("key").to_pylist()
        n_images = table.column("n_images").to_pylist()
        vectors = load_embeddings(directory / entry.file)
        expected = sum(rows_per_sample(entry.per, n_images))
        if vectors.shape != (expected, entry.dim):
            want = (expected, entry.dim)
            raise EmbeddingsError(f"{directory / entry.file}: shape {vectors.shape}; its sidecar and manifest: {want}")
        yield shard.name, keys, n_images, vectors
