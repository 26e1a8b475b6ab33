"""Our own built datasets as a source (re-filter, re-shard, mix). Damaged shards become drops.

A shard whose sha256 differs from the source manifest is not read at all (every sample of it becomes a
``shard_corrupt`` drop): its bytes cannot be trusted. A shard shorter than the manifest says (a cut-off
copy) is read up to the damage, and the rest of its samples become ``shard_damaged`` drops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curation.errors import CurationError
from curation.readers.base import Partition
from curation.sample import Drop, Sample
from schemas import RecordError
from shards import ManifestError, read_manifest
from shards.atomic import sha256_file
from shards.codec import decode_sample
from shards.reader import TruncatedShardError, iter_members


class ShardsReader:
    def __init__(self, source) -> None:
        self.source = source
        try:
            self.manifest = read_manifest(Path(source.path))
        except (FileNotFoundError, ManifestError) as exc:
            raise CurationError(f"sources.{source.name}.path: {exc}") from None

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
        name = self.source.name
        sha256, size = self._expected(partition)
        try:
            actual_size = Path(path).stat().st_size
        except OSError as exc:
            for _ in range(partition.rows):
                yield Drop("shard_damaged", name, path, None, f"{path}: cannot read the shard ({exc.strerror})")
            return
        # A shorter file is a cut-off copy: read what is left of it below (shard_damaged for the rest).
        if actual_size >= size:
            actual = sha256_file(Path(path))
            if actual != sha256:
                detail = (
                    f"{path}: sha256 {actual[:16]}... differs from the source manifest's {sha256[:16]}... "
                    f"({actual_size} bytes, manifest {size}); nothing read from it"
                )
                for _ in range(partition.rows):
                    yield Drop("shard_corrupt", name, path, None, detail)
                return
        seen = 0
        try:
            for key, members in iter_members(Path(path)):
                if seen >= partition.rows:
                    break
                seen += 1
                try:
                    record = decode_sample(key, members)
                except RecordError as exc:
                    yield Drop("undecodable_sample", name, f"{path}:{key}", key, str(exc))
                    continue
                # The record keeps its original source in meta; accounting is by this build's source name.
                if record.source != name:
                    record = record.model_copy(
                        update={"source": name, "meta": {**record.meta, "origin_source": record.source}}
                    )
                yield Sample(record, f"{path}:{key}")
        except TruncatedShardError as exc:
            for _ in range(partition.rows - seen):
                yield Drop("shard_damaged", name, path, None, str(exc))
            return
        for _ in range(partition.rows - seen):
            yield Drop("shard_damaged", name, path, None, "shard holds fewer samples than its manifest says")
