"""Rejects shards: dropped samples with their step and reason, for inspection (``output.rejects``)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from curation.sample import Drop
from schemas import PairRecord
from shards.atomic import HashingWriter, canonical_json, sha256_file, tmp_path
from shards.codec import encode_record
from shards.imageinfo import sniff_format
from shards.manifest import ShardInfo
from shards.tarstream import TarStream
from shards.writer import PARQUET_OPTIONS

REJECTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_key", pa.string()),
        ("source", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("origin", pa.string()),
        ("detail", pa.string()),
    ]
)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


class RejectsWriter:
    def __init__(
        self, directory: Path, prefix: str, *, max_samples: int = 10_000, start_index: int = 0, folder: str = ""
    ) -> None:
        self.directory = Path(directory)
        self.folder = folder  # how manifest entries name the directory (e.g. "rejects")
        self.prefix = prefix
        self.max_samples = max_samples
        self.index = start_index
        self.shards: list[ShardInfo] = []
        self._rows: list[dict] = []
        self._tar: TarStream | None = None
        self._count = 0

    def add(self, step: str, drop: Drop) -> None:
        tar = self._open() if self._tar is None else self._tar
        self._count += 1
        key = f"{self._count:09d}_{(drop.key or 'none')[:180]}"
        members: dict[str, bytes] = {}
        if drop.record is not None:
            ext = "jpg"
            if isinstance(drop.record, PairRecord):
                ext = sniff_format(drop.record.image) or "bin"
            try:
                members = encode_record(drop.record, ext)
            except (UnicodeEncodeError, ValueError):  # e.g. lone surrogates: keep the reason, not the sample
                members = {}
        if drop.raw is not None:
            members["raw.json"] = _utf8(canonical_json(drop.raw))
        row = {
            "key": key,
            "sample_key": drop.key,
            "source": drop.source,
            "step": step,
            "reason": drop.reason,
            "origin": drop.origin,
            "detail": drop.detail[:2000],
        }
        row = {k: (_utf8(v).decode("utf-8") if isinstance(v, str) else v) for k, v in row.items()}
        members["reject.json"] = _utf8(canonical_json(row))
        tar.add_sample(key, members)
        self._rows.append(row)
        if len(self._rows) >= self.max_samples:
            self._close_shard()

    def close(self) -> list[ShardInfo]:
        if self._tar is not None:
            self._close_shard()
        return self.shards

    def _open(self) -> TarStream:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stem = f"{self.prefix}-rejects-{self.index:06d}"
        self.index += 1
        self._tmp = tmp_path(self.directory / f"{self._stem}.tar")
        self._file = open(self._tmp, "wb")  # noqa: SIM115
        self._hashing = HashingWriter(self._file)
        self._tar = TarStream(self._hashing)
        return self._tar

    def _close_shard(self) -> None:
        import pyarrow.parquet as pq

        from shards.atomic import atomic_write_json

        assert self._tar is not None  # callers close an open shard only
        self._tar.close()
        self._file.close()
        sidecar = self.directory / f"{self._stem}.parquet"
        tmp = tmp_path(sidecar)
        pq.write_table(pa.Table.from_pylist(self._rows, schema=REJECTS_SCHEMA), tmp, **PARQUET_OPTIONS)
        sidecar_sha256 = sha256_file(tmp, fsync=True)
        os.replace(tmp, sidecar)
        stats = {
            "shard": f"{self._stem}.tar",
            "samples": len(self._rows),
            "bytes": self._hashing.size,
            "sha256": self._hashing.sha256.hexdigest(),
            "sidecar_sha256": sidecar_sha256,
        }
        atomic_write_json(self.directory / f"{self._stem}.stats.json", stats)
        os.replace(self._tmp, self.directory / f"{self._stem}.tar")
        self.shards.append(ShardInfo.from_stats(self._stem, stats, folder=self.folder))
        self._rows, self._tar = [], None
