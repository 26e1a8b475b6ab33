"""Parquet with image bytes, image paths, or HF Image structs ``{bytes, path}``; partitions are runs of
whole row groups, so a partition is read without touching the rest of the file."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.readers.base import Partition, RowReader, default_key, expand_inputs
from curation.sample import Drop, Sample


class ParquetReader(RowReader):
    def plan(self) -> list[Partition]:
        files = expand_inputs(self.source.path, (".parquet",), self.source.name)
        return row_group_partitions(self.source, files)

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec = partition.spec
        row_number = spec["first_row"]
        emitted = 0
        try:
            batches = pq.ParquetFile(spec["file"]).iter_batches(batch_size=512, row_groups=spec["row_groups"])
            for batch in batches:
                for row in batch.to_pylist():
                    if emitted >= partition.rows:  # a --limit can cut a partition short
                        return
                    emitted += 1
                    origin = f"{spec['file']}#{row_number}"
                    row_key = default_key(self.source.name, spec["file"], spec["file_index"], row_number)
                    row_number += 1
                    yield self.to_item(row, origin, row_key)
        except (pa.ArrowException, OSError) as exc:  # a damaged page: the rest of the partition is lost, counted
            detail = f"{spec['file']}: {exc}"[:500]
            for _ in range(partition.rows - emitted):
                yield Drop("file_unreadable", self.source.name, spec["file"], None, detail)


def row_group_partitions(source, files: list, extra: Callable[[int, int], dict] | None = None) -> list[Partition]:
    """Partitions of whole row groups holding about ``source.partition_size`` rows each; ``extra(file_index,
    first_row)`` adds reader-specific spec fields."""
    parts: list[Partition] = []
    for file_index, path in enumerate(files):
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as exc:
            raise CurationError(f"sources.{source.name}: cannot read parquet file {path}: {exc}") from None
        groups: list[int] = []
        rows = start_row = 0
        for rg in range(meta.num_row_groups):
            groups.append(rg)
            rows += meta.row_group(rg).num_rows
            if rows >= source.partition_size or rg == meta.num_row_groups - 1:
                if rows:
                    spec = {"file": str(path), "file_index": file_index, "row_groups": groups, "first_row": start_row}
                    spec.update(extra(file_index, start_row) if extra else {})
                    parts.append(Partition(source.name, len(parts), rows, spec))
                start_row += rows
                groups, rows = [], 0
    return parts
