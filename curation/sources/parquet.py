"""Parquet with image bytes, image paths, or HF Image structs ``{bytes, path}``; partitions are runs of
whole row groups, so a partition is read without touching the rest of the file."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.recipe import ParquetSource
from curation.sample import Drop, Sample
from curation.sources.base import (
    BUILD_RECORD_DROP_REASONS,
    Partition,
    RowReader,
    default_key,
    expand_inputs,
    fetches_at_once,
    in_order,
)
from curation.storage.inputs import PARQUET_BLOCK, SMALL_BLOCK, StreamedObject, open_url
from curation.storage.urls import is_url


class ParquetReader(RowReader):
    config = ParquetSource
    input_suffixes = (".parquet",)
    reads_urls = True  # row groups read by ranges; the plan reads only the footers
    drop_reasons: ClassVar[dict[str, str]] = {
        "file_unreadable": "a damaged parquet page: the rest of its partition",
        **BUILD_RECORD_DROP_REASONS,
    }

    def plan(self) -> list[Partition]:
        files = expand_inputs(self.source.path, self.input_suffixes, self.source.name)
        return row_group_partitions(self.source, files)

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        yield from in_order(self._calls(partition), fetches_at_once(self.source.image_root))

    def _calls(self, partition: Partition) -> Iterator[Callable[[], Sample | Drop]]:
        """What makes each item of the partition, in order (``in_order`` may run some ahead)."""
        spec = partition.spec
        row_number = spec["first_row"]
        emitted = 0
        for rows in row_batches(spec["file"], spec["row_groups"]):
            if isinstance(rows, str):  # a damaged page: the rest of the partition is lost, counted
                drop = Drop("file_unreadable", self.source.name, spec["file"], None, rows)
                for _ in range(partition.rows - emitted):
                    yield partial(dataclasses.replace, drop)
                return
            for row in rows:
                if emitted >= partition.rows:  # a --limit can cut a partition short
                    return
                emitted += 1
                origin = f"{spec['file']}#{row_number}"
                row_key = default_key(self.source.name, spec["file"], spec["file_index"], row_number)
                row_number += 1
                yield partial(self.to_item, row, origin, row_key)


def open_parquet(path: str | Path, source: str) -> pq.ParquetFile:
    """A parquet file of a source, opened at plan time: one clear error for anything that is not parquet.
    A URL: only its footer is read (:func:`parquet_footer`)."""
    if is_url(str(path)):
        return parquet_footer(str(path), source)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CurationError(f"sources.{source}: cannot read parquet file {path}: {exc}") from None


def parquet_footer(url: str, source: str) -> pq.ParquetFile:
    """The footer of a parquet object (its metadata and schema: the ranged reads of the last bytes only), as a
    ``ParquetFile`` whose ``metadata`` and ``schema_arrow`` need no further reads."""
    try:
        with open_url(url, SMALL_BLOCK) as f:
            meta = pq.read_metadata(f)
        return _Footer(meta)  # type: ignore[return-value] - the ParquetFile attributes the plan reads
    except (pa.ArrowException, OSError) as exc:
        raise CurationError(f"sources.{source}: cannot read parquet file {url}: {exc}") from None


class _Footer:
    """What the plan reads of a ``ParquetFile`` (``metadata``, ``schema_arrow``), from its footer alone."""

    def __init__(self, metadata: pq.FileMetaData) -> None:
        self.metadata = metadata
        self.schema_arrow = metadata.schema.to_arrow_schema()


def streaming(path: str | Path | StreamedObject) -> pq.ParquetFile:
    """A parquet file to read once, in order, without pre-buffering: pyarrow keeps pre-buffered row groups
    until the file is closed (~40 KB per row of a 10,000-row partition of images stayed resident). A URL's
    file object must stay open while it is read: use :func:`parquet_input`."""
    return pq.ParquetFile(path, pre_buffer=False)


@contextlib.contextmanager
def parquet_input(path: str | Path) -> Iterator[str | Path | StreamedObject]:
    """What ``pq.ParquetFile`` opens: a local path as it is, a URL as a streamed object (closed on exit), read
    by ranges: pyarrow asks for the footer, then for each column chunk of the row groups it reads."""
    if is_url(str(path)):
        with open_url(str(path), PARQUET_BLOCK) as f:
            yield f
    else:
        yield path


def row_batches(
    path: str, row_groups: list[int], columns: list[str] | None = None, batch_size: int = 512
) -> Iterator[list[dict[str, Any]] | str]:
    """The rows of some row groups in batches, then a one-line error (and nothing after it) where the file
    cannot be read. Only the decoding is guarded: a failure of the caller's work on a row is that row's, and
    never taken for a damaged page that would lose the row in flight."""
    try:
        with parquet_input(path) as source:
            # From a bucket, column chunks are read one after the other, in file order, so the read-ahead of
            # one serves the next (threads reading columns at once would make each one a GET of its own).
            batches = streaming(source).iter_batches(
                batch_size=batch_size, row_groups=row_groups, columns=columns, use_threads=not is_url(str(path))
            )
            for batch in batches:
                rows = batch.to_pylist()
                yield rows
    except (pa.ArrowException, OSError) as exc:
        yield f"{path}: {exc}"[:500]


def row_group_partitions(source, files: list, extra: Callable[[int, int], dict] | None = None) -> list[Partition]:
    """Partitions of whole row groups holding about ``source.partition_size`` rows each; ``extra(file_index,
    first_row)`` adds reader-specific spec fields."""
    parts: list[Partition] = []
    for file_index, path in enumerate(files):
        meta = open_parquet(path, source.name).metadata
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
