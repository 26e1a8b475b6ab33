"""``semantic_dedup``: near-duplicate samples by the cosine of their stored embeddings (global, out of core).

The vectors are the staged shards' embedding files, memory-mapped and read shard by shard in dataset order
(``curation.dedup.semantic``: exact brute force at small scale, a faiss IVF index with float16 storage past
it, or SemDeDup-style clusters). A sample's vector is its image's (the mean of its images' for several); samples
without images are never duplicates, nor are samples an earlier global step dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq

from curation.dedup.semantic import EmbeddingBlock, semantic_duplicates
from curation.recipe.models import SemanticDedupStep
from curation.steps.contract import GlobalContext, GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep
from curation.steps.dedup import Sidecars
from shards.embeddings import embedding_file_name, load_embeddings, rows_per_sample

DUPLICATE = "semantic_duplicate"


def staged_embeddings(sidecar: Path, name: str) -> Path:
    """A staged shard's embedding file (beside its sidecar ``<stem>.parquet``)."""
    return sidecar.with_name(embedding_file_name(sidecar.name[: -len(".parquet")], name))


@dataclass(frozen=True)
class _Shard:
    where: tuple[int, int]
    sidecar: Path
    first_row: int  # global row id of the shard's first sample
    samples: int


def sample_vectors(vectors: np.ndarray, per: str, n_images: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(float16 vectors, sample positions) of a shard's samples that have one: per-sample embeddings as they
    are (no copy of a memory map); per-image ones averaged per sample, samples without images left out."""
    if per == "sample":
        return vectors, np.arange(len(n_images), dtype=np.int64)
    counts = np.asarray(rows_per_sample("image", n_images), dtype=np.int64)
    if counts.size and np.all(counts == 1):
        return vectors, np.arange(len(n_images), dtype=np.int64)
    has = np.flatnonzero(counts > 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
    means = (
        np.stack([vectors[starts[i] : starts[i] + counts[i]].astype(np.float32).mean(axis=0) for i in has])
        if has.size
        else np.zeros((0, vectors.shape[1]), np.float32)
    )
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.where(norms > 0, norms, 1.0)).astype(np.float16), has


class SemanticDedup(GlobalStep):
    config = SemanticDedupStep
    drop_reasons: ClassVar[dict[str, str]] = {
        DUPLICATE: "its embedding is within the cosine threshold of an earlier kept sample's"
    }

    @classmethod
    def find(
        cls, cfg: SemanticDedupStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        name = f"{cfg.model}.{cfg.embedding}"
        per = "image" if cfg.embedding == "image" else "sample"
        shards: list[_Shard] = []
        row = 0
        sources: dict[str, int] = {}
        dim = 0
        for gid, number, path in sidecars:
            n = pq.ParquetFile(path).metadata.num_rows
            shards.append(_Shard((gid, number), path, row, n))
            row += n
            dim = dim or (load_embeddings(staged_embeddings(path, name)).shape[1] if n else 0)
        excluded = _excluded_rows(shards, already)

        def blocks() -> Iterator[EmbeddingBlock]:
            for shard in shards:
                if not shard.samples:
                    continue
                table = pq.read_table(shard.sidecar, columns=["n_images", "source"])
                vectors, positions = sample_vectors(
                    load_embeddings(staged_embeddings(shard.sidecar, name)), per, table.column("n_images").to_pylist()
                )
                groups = None
                if cfg.scope == "source":
                    names = table.column("source").to_pylist()
                    groups = np.asarray([sources.setdefault(names[p], len(sources)) for p in positions], np.int32)
                if len(positions):
                    yield EmbeddingBlock(vectors, shard.first_row + positions, groups)

        if not dim:
            return GlobalFindings({})
        matches = list(
            semantic_duplicates(
                blocks,
                dim,
                cfg.threshold,
                cfg.method,
                exact_below=cfg.exact_below,
                nlist=cfg.nlist,
                nprobe=cfg.nprobe,
                threads=cfg.threads,  # not context.threads: the drops must not depend on --workers
                work=context.work / f"semantic-dedup-{label}",
                excluded=excluded,
            )
        )
        return GlobalFindings(_drops(label, shards, matches))


def _excluded_rows(shards: list[_Shard], already: GlobalDrops) -> np.ndarray:
    """Global row ids of the samples earlier global steps dropped (sorted)."""
    rows: list[int] = []
    for shard in shards:
        gone = already.get(shard.where)
        if not gone:
            continue
        keys = pq.read_table(shard.sidecar, columns=["key"]).column("key").to_pylist()
        rows.extend(shard.first_row + i for i, k in enumerate(keys) if k in gone)
    return np.asarray(sorted(rows), dtype=np.int64)


def _drops(label: str, shards: list[_Shard], matches: list) -> GlobalDrops:
    """The matches as drops naming the kept sample each duplicates; only the sidecars of shards with a match,
    or holding a kept original, are read."""
    firsts = np.asarray([s.first_row for s in shards], dtype=np.int64)

    @functools.lru_cache(maxsize=32)  # bounded: the matches touch any number of shards
    def columns(i: int) -> dict:
        return pq.read_table(shards[i].sidecar, columns=["key", "source", "origin"]).to_pydict()

    def sample(row: int) -> tuple[_Shard, int, dict]:
        i = int(np.searchsorted(firsts, row, side="right")) - 1
        return shards[i], row - shards[i].first_row, columns(i)

    found: GlobalDrops = {}
    for match in matches:
        shard, pos, cols = sample(match.row)
        _, first_pos, first = sample(match.duplicate_of)
        detail = f"cosine {match.cosine:.4f} with {first['key'][first_pos]} ({first['origin'][first_pos]})"
        found.setdefault(shard.where, {})[cols["key"][pos]] = GlobalDrop(
            cols["source"][pos], label, DUPLICATE, detail, first["source"][first_pos]
        )
    return found
