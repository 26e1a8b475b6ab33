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
import hashlib
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from curation.errors import CurationError
from curation.recipe import ShardsSource
from curation.sample import Drop, Sample
from curation.sources.base import Partition, Reader
from curation.storage.inputs import MAX_MANIFEST_BYTES, open_url, read_object
from curation.storage.urls import is_url
from schemas import RecordError
from schemas.records import KEY_PATTERN
from shards import ManifestError, read_manifest
from shards.atomic import sha256_file
from shards.codec import decode_sample
from shards.manifest import MANIFEST_NAME, DatasetManifest, parse_manifest
from shards.reader import MAX_MEMBER_BYTES, TarSample, TruncatedShardError, iter_samples, iter_tar_samples

HASH_CHUNK = 8 << 20

# Past this many lost rows in one shard (only a hostile manifest claims so many), they are one bulk drop.
MAX_ROW_DROPS = 1_000_000
_KEY_OK = re.compile(KEY_PATTERN)


class ShardsReader(Reader):
    config = ShardsSource
    reads_urls = True  # a build in a bucket: its manifest, then each shard streamed (hashed, then parsed)
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
            self.manifest = _url_manifest(source.path) if is_url(source.path) else read_manifest(Path(source.path))
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
                {"shard": self._shard(s.name), "sha256": s.sha256, "bytes": s.bytes},
            )
            for i, s in enumerate(self.manifest.shards)
        ]

    def _shard(self, name: str) -> str:
        path = self.source.path
        return f"{path.rstrip('/')}/{name}" if is_url(path) else str(Path(path) / name)

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
        if is_url(path):
            problem, etag = _unreadable_object(path, sha256, size)
            samples = iter_tar_samples(lambda: open_url(path, etag=etag), path, MAX_MEMBER_BYTES)
        else:
            problem, samples = _unreadable(Path(path), sha256, size), iter_samples(Path(path), MAX_MEMBER_BYTES)
        if problem is not None:
            yield from _lost(partition.rows, Drop(problem[0], self.source.name, path, None, problem[1]))
            return
        seen = 0
        try:
            for sample in samples:
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


def _url_manifest(url: str) -> DatasetManifest:
    """The manifest of a build in a bucket (``<url>/dataset.json``). Raises FileNotFoundError or ManifestError."""
    where = f"{url.rstrip('/')}/{MANIFEST_NAME}"
    try:
        data = read_object(where, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} is not a built dataset (no {MANIFEST_NAME})") from None
    except OSError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return parse_manifest(data, where)


def _unreadable_object(url: str, sha256: str, size: int) -> tuple[tuple[str, str] | None, str | None]:
    """``_unreadable`` for a shard in a bucket, and the ETag it was verified at: its bytes are streamed once
    through sha256 before they are parsed (a second streamed read, of that ETag only), so a corrupt shard is
    never read, as for a local one."""
    try:
        with open_url(url) as f:
            actual_size, etag = f.size, f.etag
            if actual_size < size:
                return None, etag  # a cut-off copy: read up to the damage
            digest = hashlib.sha256()
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        return ("shard_damaged", f"{url}: cannot read the shard ({exc.strerror or exc})"), None
    actual = digest.hexdigest()
    if actual == sha256:
        return None, etag
    detail = (
        f"{url}: sha256 {actual[:16]}... differs from the source manifest's {sha256[:16]}... "
        f"({actual_size} bytes, manifest {size}); nothing read from it"
    )
    return ("shard_corrupt", detail), etag


def _lost(n: int, drop: Drop) -> Iterator[Drop]:
    """``n`` planned rows that were not read: one drop each (kept in rejects/), or one bulk count when a
    manifest claims more samples than could ever be listed one by one."""
    if n > MAX_ROW_DROPS:
        yield dataclasses.replace(drop, count=n)
        return
    for _ in range(n):
        yield drop
