"""JSON lines + an image folder. One JSON object per line; blank lines are skipped (not counted)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from curation.readers.base import Partition, RowReader, default_key, expand_inputs
from curation.sample import Drop, Sample


class JsonlReader(RowReader):
    def plan(self) -> list[Partition]:
        """Partitions of ``partition_size`` non-blank lines, each with the byte offset it starts at."""
        parts: list[Partition] = []
        size = self.source.partition_size
        for file_index, path in enumerate(expand_inputs(self.source.path, (".jsonl", ".json"), self.source.name)):
            starts: list[int] = []
            n = offset = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        if n % size == 0:
                            starts.append(offset)
                        n += 1
                    offset += len(line)
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
        src = self.source
        ordinal = spec["start"] - 1
        with open(spec["file"], "rb") as f:
            f.seek(spec["offset"])  # straight to the partition: no rescan from line 0
            for line in f:
                if not line.strip():
                    continue
                ordinal += 1
                if ordinal >= spec["stop"]:
                    break
                origin = f"{spec['file']}:{ordinal + 1}"
                row_key = default_key(self.source.name, spec["file"], spec["file_index"], ordinal)
                try:
                    row = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                    raw = {"line": line[:10_000].decode("utf-8", "replace")}
                    yield Drop("invalid_json", src.name, origin, row_key, str(exc)[:500], raw=raw)
                    continue
                if not isinstance(row, dict):
                    raw = {"line": line[:10_000].decode("utf-8", "replace")}
                    yield Drop("invalid_json", src.name, origin, row_key, "line is not a JSON object", raw=raw)
                    continue
                item = self.to_item(row, origin, row_key)
                if isinstance(item, Drop):
                    item.raw = {"line": line[:10_000].decode("utf-8", "replace")}
                yield item
