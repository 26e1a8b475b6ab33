"""JSON lines + an image folder. One JSON object per line; blank lines are skipped (not counted). What a line
is, and how strictly it is parsed, is :mod:`curation.sources.jsontext`'s, shared by ``plan()`` and ``read()``."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import islice
from typing import Any, ClassVar

from curation.recipe import JsonlSource
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
from curation.sources.jsontext import (
    MAX_RECORD_BYTES,
    REFUSED,
    TOO_LARGE,
    JsonRecordError,
    Line,
    iter_lines,
    loads_bytes,
    not_an_object,
    too_large_detail,
)
from curation.storage.inputs import open_input


class JsonlReader(RowReader):
    config = JsonlSource
    input_suffixes = (".jsonl", ".json")
    reads_urls = True  # lines streamed from the bucket; a partition starts a ranged read at its offset
    drop_reasons: ClassVar[dict[str, str]] = {
        "invalid_json": f"a line that is not a strict JSON object: {REFUSED}",
        TOO_LARGE: f"a line over {MAX_RECORD_BYTES >> 20} MiB; read past, never held in memory",
        **BUILD_RECORD_DROP_REASONS,
    }

    def plan(self) -> list[Partition]:
        """Partitions of ``partition_size`` non-blank lines, each with the byte offset it starts at."""
        parts: list[Partition] = []
        size = self.source.partition_size
        for file_index, path in enumerate(expand_inputs(self.source.path, self.input_suffixes, self.source.name)):
            starts: list[int] = []
            n = 0
            with open_input(str(path)) as f:
                for line in iter_lines(f):
                    if n % size == 0:
                        starts.append(line.offset)
                    n += 1
            for i, byte_offset in enumerate(starts):
                start = i * size
                spec = {
                    "file": str(path),
                    "file_index": file_index,
                    "start": start,
                    "stop": min(n, start + size),
                    "offset": byte_offset,
                }
                parts.append(Partition(self.source.name, len(parts), spec["stop"] - start, spec))
        return parts

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec = partition.spec
        rows = min(partition.rows, spec["stop"] - spec["start"])
        with open_input(spec["file"]) as f:  # straight to the partition's offset: no rescan from line 0
            lines = enumerate(islice(iter_lines(f, spec["offset"]), rows), spec["start"])
            calls = (partial(self._item, spec, ordinal, line) for ordinal, line in lines)
            yield from in_order(calls, fetches_at_once(self.source.image_root))

    def _item(self, spec: dict[str, Any], ordinal: int, line: Line) -> Sample | Drop:
        """A line as a Sample, or a Drop naming what is wrong with it."""
        src = self.source
        origin = f"{spec['file']}:{ordinal + 1}"
        row_key = default_key(src.name, spec["file"], spec["file_index"], ordinal)
        raw = {"line": line.raw()}
        if line.too_large:
            detail = too_large_detail("a line", line.length)
            return Drop(TOO_LARGE, src.name, origin, row_key, detail, raw=raw)
        try:
            row = loads_bytes(line.data)
        except JsonRecordError as exc:
            return Drop("invalid_json", src.name, origin, row_key, str(exc)[:500], raw=raw)
        if not isinstance(row, dict):
            return Drop("invalid_json", src.name, origin, row_key, not_an_object(row), raw=raw)
        item = self.to_item(row, origin, row_key)
        if isinstance(item, Drop):
            item.raw = raw
        return item
