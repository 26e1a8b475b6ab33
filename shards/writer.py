"""Deterministic, atomic webdataset shard writer with a parquet sidecar and a stats json per shard.

Determinism: members are written by :class:`shards.tarstream.TarStream` in sorted order with a fixed
mtime, owner and mode, so the same records give byte-identical tars. Atomicity: the tar, sidecar and
stats are written under temporary names; sidecar and stats are renamed first and the tar last, so a
visible ``.tar`` always has its sidecar and is complete.

Speed: a full shard is finished (sha256 of the tar, fsync, sidecar, stats, renames) on a background
thread while the next shard is written; hashing and fsync release the GIL, so this uses a second core.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import SIDECAR_SCHEMA, PairRecord, PdfRecord, Record, SftRecord
from schemas.sidecar import sidecar_schema
from shards.atomic import HashingWriter, atomic_write_json, fsync_file, sha256_file, tmp_path
from shards.codec import PAIR_IMAGE_EXTS, encode_record
from shards.embeddings import check_name, per_of, write_embeddings
from shards.imageinfo import ImageInfo, probe_image, reencode
from shards.manifest import ShardInfo
from shards.tarstream import TarStream
from shards.tokens import TokenCounter, count_each, count_record, count_tokens

# Parquet written the same way every time (no wall-clock values, fixed compression).
PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True, "store_schema": True}
# The stats key of a shard's sample offsets (``ShardWriter(record_offsets=True)``): where each sample's first
# header starts in the tar, then where the end-of-archive blocks start.
SAMPLE_OFFSETS = "sample_offsets"


class DuplicateKeyError(ValueError):
    """The key already appears in the shard being written."""


def default_shard_name(prefix: str) -> Callable[[int], str]:
    return lambda i: f"{prefix}-{i:06d}"


@dataclass
class _OpenShard:
    stem: str
    tmp: Path
    file: BinaryIO
    tar: TarStream
    hashing: HashingWriter
    rows: list[dict] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    payload: int = 0
    reencoded: int = 0
    offsets: list[int] = field(default_factory=list)
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)  # embedding name -> rows per sample


class ShardWriter:
    """Write records into ``directory`` as ``<stem>.tar`` + ``<stem>.parquet`` + ``<stem>.stats.json``.

    A shard is closed when it holds ``max_samples`` samples or ``max_bytes`` of payload. With
    ``record_offsets``, its stats also list each sample's byte offset in the tar under :data:`SAMPLE_OFFSETS`
    (staged shards: the build's commit then copies samples as byte ranges instead of parsing the tar).
    ``embedding_dims`` names the embeddings (``shards.embeddings``) every sample brings, with their width;
    ``turn_ratings`` names the ``meta.ratings`` axes kept per turn (adds the sidecar's per-turn columns).
    """

    def __init__(
        self,
        directory: Path,
        shard_name: Callable[[int], str] | str,
        *,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        pair_image_ext: str = "jpg",
        token_counter: TokenCounter = count_tokens,
        start_index: int = 0,
        score_keys: Sequence[str] = (),
        record_offsets: bool = False,
        embedding_dims: dict[str, int] | None = None,
        turn_ratings: Sequence[str] = (),
    ) -> None:
        if pair_image_ext not in PAIR_IMAGE_EXTS:
            raise ValueError(f"pair_image_ext must be one of {PAIR_IMAGE_EXTS}, got {pair_image_ext!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name = default_shard_name(shard_name) if isinstance(shard_name, str) else shard_name
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.pair_image_ext = pair_image_ext
        self.count = token_counter
        self.score_keys = tuple(score_keys)
        self.record_offsets = record_offsets
        self.embedding_dims = {check_name(n): d for n, d in sorted((embedding_dims or {}).items())}
        self.turn_ratings = tuple(dict.fromkeys(turn_ratings))  # axes of meta.ratings kept per turn
        self.schema = sidecar_schema(turn_columns=bool(self.turn_ratings))
        self._next_index = start_index
        self._open: _OpenShard | None = None
        self._finishing: list[Future[ShardInfo]] = []
        self._pool: ThreadPoolExecutor | None = None
        self.shards: list[ShardInfo] = []

    # -- public ---------------------------------------------------------------------------------
    def write(
        self,
        record: Record,
        infos: Sequence[ImageInfo] | None = None,
        origin: str = "",
        image_hashes: dict[str, list[int]] | None = None,
        embeddings: dict[str, np.ndarray] | None = None,
    ) -> tuple[str, int]:
        """Add one record; returns (shard stem, index in the shard). ``infos`` are the probed images (probed
        here when not given); ``image_hashes`` maps ``phash``/``dhash`` to one signed 64-bit hash per image;
        ``embeddings`` holds the sample's rows of each name in ``embedding_dims``."""
        images = record.image_list()
        if infos is None:
            infos = [probe_image(b) for b in images]
        rows = self._embedding_rows(record.key, len(images), embeddings or {})
        if isinstance(record, PairRecord) and infos[0].format != self.pair_image_ext:
            data = reencode(record.image, self.pair_image_ext)
            record = record.model_copy(update={"image": data})
            infos = [probe_image(data)]
            reencoded = 1
        else:
            reencoded = 0
        shard = self._open or self._start()
        if record.key in shard.keys:
            raise DuplicateKeyError(f"key {record.key!r} already in shard {shard.stem}")
        if self.record_offsets:
            shard.offsets.append(shard.tar.size)
        nbytes = shard.tar.add_sample(record.key, encode_record(record, self.pair_image_ext))
        text_tokens, answer_tokens = count_record(self.count, record)
        shard.rows.append(
            {
                "key": record.key,
                "kind": record.kind,
                "source": record.source,
                "shard": shard.stem + ".tar",
                "index": len(shard.rows),
                "n_images": len(infos),
                "widths": [i.width for i in infos],
                "heights": [i.height for i in infos],
                "image_sha256": [i.sha256 for i in infos],
                "image_formats": [i.format for i in infos],
                "text_tokens": text_tokens,
                "answer_tokens": answer_tokens,
                "turns": record.num_turns(),
                "pages": len(record.pages) if isinstance(record, PdfRecord) else None,
                "bytes": nbytes,
                "origin": origin,
                "image_phash": (image_hashes or {}).get("phash"),
                "image_dhash": (image_hashes or {}).get("dhash"),
                "scores": self._scores(record.meta),
                **(turn_columns(self.count, record, self.turn_ratings) if self.turn_ratings else {}),
            }
        )
        shard.keys.add(record.key)
        for name, vectors in rows.items():
            shard.vectors.setdefault(name, []).append(vectors)
        shard.payload += nbytes
        shard.reencoded += reencoded
        where = (shard.stem, len(shard.rows) - 1)
        if len(shard.rows) >= self.max_samples or shard.payload >= self.max_bytes:
            self._finish()
        return where

    def _scores(self, meta: dict) -> list[tuple[str, float]]:
        return [
            (k, float(v))
            for k in self.score_keys
            if isinstance(v := meta.get(k), int | float) and not isinstance(v, bool)
        ]

    def _embedding_rows(self, key: str, n_images: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The sample's embedding rows, checked: exactly the declared names, one row per image or per sample
        (a mismatch is a bug of the step that computed them, never bad data: RuntimeError)."""
        if set(given) != set(self.embedding_dims):
            raise RuntimeError(
                f"sample {key!r}: embeddings {sorted(given)} given, {sorted(self.embedding_dims)} declared"
            )
        for name, dim in self.embedding_dims.items():
            want = (n_images if per_of(name) == "image" else 1, dim)
            if given[name].shape != want:
                raise RuntimeError(f"sample {key!r}: embeddings {name!r} of shape {given[name].shape}, want {want}")
        return given

    def between_shards(self) -> bool:
        """Whether no shard is open: the last write finished one (or nothing was written yet)."""
        return self._open is None

    def finished(self) -> list[ShardInfo]:
        """The shards finished so far, in order, each complete on disk (waits for those still being written);
        the open shard stays open."""
        self._wait()
        return list(self.shards)

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and wait for all shards to be complete; returns them in order."""
        if self._open is not None:
            self._finish()
        self._wait()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file); finished shards stay."""
        if self._open is not None:
            self._open.file.close()
            self._open.tmp.unlink(missing_ok=True)
            self._open = None
        self._wait()

    # -- internals ------------------------------------------------------------------------------
    def _start(self) -> _OpenShard:
        stem = self._name(self._next_index)
        self._next_index += 1
        tmp = tmp_path(self.directory / f"{stem}.tar")
        f = open(tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in _finish/abort
        # hashed as it is written: reading the shard back to hash it cost a second pass over its bytes
        hashing = HashingWriter(f)
        self._open = _OpenShard(stem=stem, tmp=tmp, file=f, tar=TarStream(hashing), hashing=hashing)
        return self._open

    def _finish(self) -> None:
        shard = self._open
        assert shard is not None
        if self.record_offsets:
            shard.offsets.append(shard.tar.size)  # the end of the last sample
        shard.tar.close()
        shard.file.close()
        self._open = None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-finish")
        self._finishing.append(self._pool.submit(self._finalize, shard))

    def _finalize(self, shard: _OpenShard) -> ShardInfo:
        fsync_file(shard.tmp)
        sha256 = shard.hashing.sha256.hexdigest()
        extra: dict[str, object] = {"reencoded_images": shard.reencoded}
        if self.record_offsets:
            extra[SAMPLE_OFFSETS] = shard.offsets
        if self.embedding_dims:
            extra["embeddings"] = {
                name: write_embeddings(
                    self.directory,
                    shard.stem,
                    name,
                    np.concatenate(shard.vectors.get(name, []) or [np.zeros((0, dim))]),
                ).model_dump()
                for name, dim in self.embedding_dims.items()
            }
        info = write_shard_metadata(
            self.directory,
            shard.stem,
            table=pa.Table.from_pylist(shard.rows, schema=self.schema),
            sha256=sha256,
            size=shard.tar.size,
            extra_stats=extra,
        )
        os.replace(shard.tmp, self.directory / info.name)  # the tar becomes visible last
        return info

    def _wait(self) -> None:
        try:
            for fut in self._finishing:
                self.shards.append(fut.result())
        finally:
            self._finishing = []
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def turn_columns(counter: TokenCounter, record: Record, axes: Sequence[str]) -> dict[str, object]:
    """The per-turn sidecar columns of a record: answer tokens per turn and the ``meta.ratings`` of ``axes``
    (a rating that is not a number is null); null for records without turns."""
    if not isinstance(record, SftRecord):
        return {"turn_answer_tokens": None, "turn_ratings": None}
    tokens = count_each(counter, [t.assistant for t in record.turns])
    ratings = record.meta.get("ratings")
    found: list[tuple[str, list[float | None]]] = []
    for axis in axes:
        values = ratings.get(axis) if isinstance(ratings, dict) else None
        if isinstance(values, list) and len(values) == len(record.turns):
            found.append((axis, [_number(v) for v in values]))
    return {"turn_answer_tokens": tokens, "turn_ratings": found or None}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def write_shard_metadata(
    directory: Path, stem: str, *, table: pa.Table, sha256: str, size: int, extra_stats: dict | None = None
) -> ShardInfo:
    """Write the sidecar ``table`` as ``<stem>.parquet`` and ``<stem>.stats.json`` (which records the
    sidecar's sha256), atomically; return the shard's manifest entry. Sets the ``shard`` column to this
    shard's name."""
    name = f"{stem}.tar"
    table = table.set_column(
        table.schema.get_field_index("shard"),
        SIDECAR_SCHEMA.field("shard"),
        pa.array([name] * table.num_rows, pa.string()),
    )
    sidecar = directory / f"{stem}.parquet"
    tmp = tmp_path(sidecar)
    pq.write_table(table, tmp, **PARQUET_OPTIONS)
    sidecar_sha256 = sha256_file(tmp, fsync=True)
    os.replace(tmp, sidecar)

    def total(column: str) -> int:
        return int(pc.sum(table.column(column)).as_py() or 0)  # pyright: ignore[reportAttributeAccessIssue]  # pyarrow.compute is dynamic

    counts = pc.value_counts(table.column("source")).to_pylist()  # pyright: ignore[reportAttributeAccessIssue]  # pyarrow.compute is dynamic
    stats = {
        "shard": name,
        "samples": table.num_rows,
        "bytes": size,
        "sha256": sha256,
        "sidecar_sha256": sidecar_sha256,
        "payload_bytes": total("bytes"),
        "images": total("n_images"),
        "text_tokens": total("text_tokens"),
        "answer_tokens": total("answer_tokens"),
        "sources": dict(sorted((c["values"], c["counts"]) for c in counts)),
        **(extra_stats or {}),
    }
    atomic_write_json(directory / f"{stem}.stats.json", stats)
    return ShardInfo.from_stats(stem, stats)
