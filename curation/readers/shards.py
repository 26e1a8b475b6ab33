"""Our own built datasets as a source (re-filter, re-shard, mix). Damaged shards become drops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curation.errors import CurationError
from curation.readers.base import Partition
from curation.sample import Drop, Sample
from schemas import RecordError
from shards import read_manifest
from shards.codec import decode_sample
from shards.reader import TruncatedShardError, iter_members


class ShardsReader:
    def __init__(self, source) -> None:
        self.source = source
        try:
            self.manifest = read_manifest(Path(source.path))
        except FileNotFoundError as exc:
            raise CurationError(f"sources.{source.name}.path: {exc}") from None

    def record_kind(self) -> str:
        return self.manifest.kind

    def plan(self) -> list[Partition]:
        return [
            Partition(self.source.name, i, s.samples, {"shard": str(Path(self.source.path) / s.name)})
            for i, s in enumerate(self.manifest.shards)
        ]

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        path = partition.spec["shard"]
        name = self.source.name
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
