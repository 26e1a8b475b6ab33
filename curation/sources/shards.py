"""Our own built datasets as a source (re-filter, re-shard, mix). Damaged shards become drops.

A shard whose sha256 differs from the source manifest is not read at all (every sample of it becomes a
``shard_corrupt`` drop): its bytes cannot be trusted. A shard shorter than the manifest says (a cut-off
copy) is read up to the damage, and the rest of its samples become ``shard_damaged`` drops.

A matching hash proves only that the shard is the one its manifest names, not that we wrote it, so its
content is still checked (``shards.reader``): a sample with a member that is not a regular file
(``not_a_regular_file``) or over the reader's cap (``member_too_large``) is dropped unread, and one that
does not decode or validate as a record of its kind is an ``undecodable_sample`` drop; the rest of the
shard is read on. Every planned row leaves as a sample or a drop."""

from __future__ import annotations

import dataclasses
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from curation.errors import CurationError
from curation.recipe import ShardsSource
from curation.sample import Drop, Sample
from curation.sources.base import Partition, Reader
from schemas import RecordError
from schemas.records import KEY_PATTERN
from shards import ManifestError, read_manifest
from shards.atomic import sha256_file
from shards.codec import decode_sample
from shards.reader import MAX_MEMBER_BYTES, TarSample, TruncatedShardError, iter_samples

# Past this many lost rows in one shard (only a hostile manifest claims so many), they are one bulk drop.
MAX_ROW_DROPS = 1_000_000
_KEY_OK = re.compile(KEY_PATTERN)


class ShardsReader(Reader):
    config = ShardsSource
    drop_reasons: ClassVar[dict[str, str]] = {
        "shard_damaged": (
            "the samples the plan counted beyond where a shard is damaged: cut off, a garbled header, a member that "
            "runs past the end of the file, no end-of-archive marker, fewer samples than planned; also every sample "
            "of a shard that cannot be read at all or is not a regular file"
        ),
        "shard_corrupt": "every sample of a shard whose sha256 differs from its manifest (nothing is read from it)",
        "undecodable_sample": (
            "a sample that does not decode or validate as a record of its kind (bad JSON, msgpack or UTF-8 in a "
            "member, a missing field); the next sample is read"
        ),
        "not_a_regular_file": "a sample with a tar member that is a FIFO, device, socket or link; never read",
        "member_too_large": f"a sample with a tar member over {MAX_MEMBER_BYTES >> 30} GiB; never read",
    }

    def __init__(self, source) -> None:
        self.source = source
        try:
            self.manifest = read_manifest(Path(source.path))
        except (FileNotFoundError, ManifestError) as exc:
            from curation.sources.img2dataset_output import looks_like_img2dataset

            hint = (
                "; it looks like img2dataset output: use `reader: img2dataset`"
                if looks_like_img2dataset(source.path)
                else ""
            )
            raise CurationError(f"sources.{source.name}.path: {exc}{hint}") from None

    def record_kind(self) -> str:
        return self.manifest.kind

    def plan(self) -> list[Partition]:
        # sha256 and size are part of the plan: a source changed after planning is caught, not mixed in.
        return [
            Partition(
                self.source.name,
                i,
                s.samples,
                {"shard": str(Path(self.source.path) / s.name), "sha256": s.sha256, "bytes": s.bytes},
            )
            for i, s in enumerate(self.manifest.shards)
        ]

    def _expected(self, partition: Partition) -> tuple[str, int]:
        """(sha256, size) the source manifest gives the partition's shard."""
        spec = partition.spec
        if "sha256" in spec and "bytes" in spec:
            return spec["sha256"], spec["bytes"]
        shard = self.manifest.shards[partition.index]
        return shard.sha256, shard.bytes

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        path = partition.spec["shard"]
        sha256, size = self._expected(partition)
        problem = _unreadable(Path(path), sha256, size)
        if problem is not None:
            yield from _lost(partition.rows, Drop(problem[0], self.source.name, path, None, problem[1]))
            return
        seen = 0
        try:
            for sample in iter_samples(Path(path), MAX_MEMBER_BYTES):
                if seen >= partition.rows:
                    break
                seen += 1
                yield self._item(path, sample)
        except TruncatedShardError as exc:
            yield from _lost(partition.rows - seen, Drop("shard_damaged", self.source.name, path, None, str(exc)))
            return
        detail = f"{path}: the shard holds {seen} samples, its manifest says {partition.rows}"
        yield from _lost(partition.rows - seen, Drop("shard_damaged", self.source.name, path, None, detail))

    def _item(self, path: str, sample: TarSample) -> Sample | Drop:
        """The sample as a record of this source, or a drop naming the member that did not read or decode."""
        name, origin = self.source.name, f"{path}:{sample.key}"
        key = sample.key if _KEY_OK.match(sample.key) else None
        if sample.problem is not None:
            return Drop(sample.problem.reason, name, origin, key, str(sample.problem)[:500])
        try:
            record = decode_sample(sample.key, sample.members, validate=True)
        except RecordError as exc:
            return Drop("undecodable_sample", name, origin, key, str(exc)[:500])
        # The record keeps its original source in meta; accounting is by this build's source name.
        if record.source != name:
            record = record.model_copy(update={"source": name, "meta": {**record.meta, "origin_source": record.source}})
        return Sample(record, origin)


def _unreadable(path: Path, sha256: str, size: int) -> tuple[str, str] | None:
    """(reason, detail) when nothing of the shard can be read; None to read it. A shorter file is a cut-off
    copy: it is read up to the damage (``shard_damaged`` for the rest)."""
    try:
        st = path.stat()
    except OSError as exc:
        return "shard_damaged", f"{path}: cannot read the shard ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever, a directory cannot be read
        return "shard_damaged", f"{path}: not a regular file"
    if st.st_size < size:
        return None
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return "shard_damaged", f"{path}: cannot read the shard ({exc.strerror})"
    if actual == sha256:
        return None
    detail = (
        f"{path}: sha256 {actual[:16]}... differs from the source manifest's {sha256[:16]}... "
        f"({st.st_size} bytes, manifest {size}); nothing read from it"
    )
    return "shard_corrupt", detail


def _lost(n: int, drop: Drop) -> Iterator[Drop]:
    """``n`` planned rows that were not read: one drop each (kept in rejects/), or one bulk count when a
    manifest claims more samples than could ever be listed one by one."""
    if n > MAX_ROW_DROPS:
        yield dataclasses.replace(drop, count=n)
        return
    for _ in range(n):
        yield drop
