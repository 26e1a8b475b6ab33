"""LLaVA-style conversations (LLaVA-665K, ShareGPT4V, OpenHermes, MetaMathQA, chat ``messages``) -> ``sft``.

Inputs are ``.json`` files holding one JSON list (LLaVA-665K is ~1 GB) or JSON lines (``.jsonl``, or a ``.json``
whose first byte is ``{``). ``plan()`` streams each file once and records the byte offset of every partition's
first element; ``read()`` seeks there and decodes one element at a time, so no worker loads a whole file.

A JSON list is scanned as Latin-1 text: every byte is one character, so string indices are byte offsets, and
UTF-8 multi-byte sequences (all bytes >= 0x80) can never be mistaken for JSON structure. ``read()`` re-decodes
an element as UTF-8 when it is not plain ASCII. Elements and lines are parsed as strictly, and within the same
bounds, as every input JSON (:mod:`curation.sources.jsontext`): an element over ``MAX_RECORD_BYTES`` is a
``record_too_large`` drop, skipped without being held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from curation.errors import CurationError
from curation.recipe import LlavaSource
from curation.sample import Drop, Sample
from curation.sources.base import (
    IMAGE_FILE_DROP_REASONS,
    RECORD_DROP_REASONS,
    Partition,
    Reader,
    default_key,
    expand_inputs,
    fetches_at_once,
    image_file_drop_reason,
    in_order,
    load_image_file,
    sanitize_key,
    to_jsonable,
)
from curation.sources.jsontext import (
    BOM,
    MAX_RECORD_BYTES,
    REFUSED,
    TOO_LARGE,
    JsonRecordError,
    iter_lines,
    loads_bytes,
    not_an_object,
    too_large_detail,
)
from curation.sources.llava.conversation import Malformed, parse_conversation
from curation.sources.llava.json_list import RAW_CHARS, ListScanner, element_value, list_start
from curation.storage.inputs import open_input
from schemas import RecordError, parse_record


# ---- the reader ---------------------------------------------------------------------------------------------
def _file_format(path: Path | str) -> str:
    """``list`` (one JSON list) or ``lines`` (JSON lines: ``.jsonl``, or a ``.json`` whose first line is one
    object: it starts with ``{`` and ends with ``}``, valid or not). Loud for a ``.json`` that is neither (e.g.
    one pretty-printed object)."""
    if str(path).endswith(".jsonl"):
        return "lines"
    with open_input(str(path)) as f:
        head = f.read(4096).removeprefix(BOM).lstrip()
        if not head.startswith(b"{"):
            return "list"
        first = next(iter_lines(f), None)  # a line, as the reader splits them (bounded in length)
    if first is not None and (first.too_large or first.data.strip().endswith(b"}")):
        return "lines"
    raise CurationError(f"{path}: neither a JSON list nor JSON lines (one object per line)")


class LlavaReader(Reader):
    config = LlavaSource
    input_suffixes = (".json", ".jsonl")
    reads_urls = True  # JSON lists and lines streamed; a partition starts a ranged read at its offset
    drop_reasons: ClassVar[dict[str, str]] = {
        "invalid_json": (
            f"a line or list element that is not a strict JSON object: {REFUSED}; in a JSON list whose structure "
            "breaks (an unclosed string or bracket, a missing comma), the rest of the file"
        ),
        TOO_LARGE: f"a line or list element over {MAX_RECORD_BYTES >> 20} MiB; read past, never held in memory",
        "malformed_conversation": (
            "turns that are not user/assistant pairs (a missing or empty conversation, an unknown role, a turn "
            "without text, a question without an answer)"
        ),
        "invalid_image_field": "an image field that is not a path or a list of paths",
        **IMAGE_FILE_DROP_REASONS,
        "file_unreadable": (
            "records that can no longer be read from a file since the plan (an I/O error, a shorter file)"
        ),
        **RECORD_DROP_REASONS,
    }

    def __init__(self, source: Any) -> None:
        self.source = source

    def record_kind(self) -> str:
        return "sft"

    # -- plan
    def plan(self) -> list[Partition]:
        """Partitions of ``partition_size`` records, each with the byte offset of its first record."""
        parts: list[Partition] = []
        size = self.source.partition_size
        for file_index, path in enumerate(expand_inputs(self.source.path, self.input_suffixes, self.source.name)):
            fmt = _file_format(path)
            starts, total = (_plan_lines if fmt == "lines" else _plan_list)(path, size)
            for i, (offset, fatal) in enumerate(starts):
                start = i * size
                spec: dict[str, Any] = {
                    "file": str(path),
                    "file_index": file_index,
                    "format": fmt,
                    "start": start,
                    "stop": min(total, start + size),
                    "offset": offset,
                }
                if fatal:  # the partition starts where the file becomes unreadable
                    spec["fatal"] = fatal
                parts.append(Partition(self.source.name, len(parts), spec["stop"] - start, spec))
        return parts

    # -- read
    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        spec = partition.spec
        rows = min(partition.rows, spec["stop"] - spec["start"])
        ordinal = spec["start"]
        try:
            with open_input(spec["file"]) as f:
                raw_items = _read_lines(f, spec) if spec["format"] == "lines" else _read_list(f, spec)
                numbered = enumerate(islice(raw_items, rows), ordinal)
                calls = (partial(self._item, spec, n, raw_item) for n, raw_item in numbered)
                for item in in_order(calls, fetches_at_once(self.source.image_root)):
                    yield item
                    ordinal += 1
        except OSError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            detail = "the file has fewer records than when the build was planned"
        for n in range(ordinal, spec["start"] + rows):  # rows planned but not readable now: accounting stays exact
            origin, key = self._where(spec, n)
            yield Drop("file_unreadable", self.source.name, origin, key, detail)

    def _where(self, spec: dict[str, Any], ordinal: int) -> tuple[str, str]:
        """(origin, default key) of a record."""
        origin = f"{spec['file']}:{ordinal + 1}" if spec["format"] == "lines" else f"{spec['file']}[{ordinal}]"
        return origin, default_key(self.source.name, spec["file"], spec["file_index"], ordinal)

    def _item(self, spec: dict[str, Any], ordinal: int, raw_item: RawItem) -> Sample | Drop:
        src = self.source
        row, raw, error, reason = raw_item
        origin, default_key = self._where(spec, ordinal)
        if error is None and not isinstance(row, dict):
            error = not_an_object(row)
        if error is not None:
            return Drop(reason, src.name, origin, default_key, error[:500], raw={"text": raw[:RAW_CHARS]})
        item = self.to_item(row, origin, default_key)
        if isinstance(item, Drop):
            item.raw = {"text": raw[:RAW_CHARS]}
        return item

    def to_item(self, row: dict[str, Any], origin: str, default_key: str) -> Sample | Drop:
        """An input record as an sft Sample, or a Drop with the reason."""
        src = self.source
        raw_key = row.get(src.fields.get("key", "id"))
        # ids are dataset-local (LLaVA-665K and ShareGPT4V share COCO ids; many sets number from 0): keys carry
        # the source name so sources never collide; the input id stays in meta["source_id"].
        key = sanitize_key(f"{src.name}-{raw_key}") if raw_key not in (None, "") else default_key
        try:
            conv = parse_conversation(row, src.fields)
        except Malformed as exc:
            return Drop(exc.reason, src.name, origin, key, str(exc))
        try:
            images = [load_image_file(ref, src.image_root) for ref in conv.image_refs]
        except OSError as exc:  # missing, a directory, a FIFO, too large, no permission, ...
            return Drop(image_file_drop_reason(exc), src.name, origin, key, str(exc))
        meta = {k: to_jsonable(v) for k, v in row.items() if k not in conv.used} if src.keep_extra else {}
        if conv.image_refs:
            meta["image_paths"] = to_jsonable(conv.image_value)
        if conv.system is not None:
            meta["system"] = conv.system
        if raw_key not in (None, ""):
            meta["source_id"] = to_jsonable(raw_key)
        try:
            record = parse_record(
                "sft", {"key": key, "source": src.name, "meta": meta, "images": images, "turns": conv.turns}
            )
        except RecordError as exc:
            return Drop(exc.drop_reason, src.name, origin, key, str(exc))
        return Sample(record, origin)


def _plan_list(path: Path | str, size: int) -> tuple[list[tuple[int, str | None]], int]:
    """(offset and fatal error of each partition's first element, number of elements)."""
    starts: list[tuple[int, str | None]] = []
    n = 0
    with open_input(str(path)) as f:
        offset = list_start(f)
        if offset is None:
            return [], 0
        for element in ListScanner(f, offset):
            if n % size == 0:
                starts.append((element.start, element.error if element.fatal else None))
            n += 1
    return starts, n


def _plan_lines(path: Path | str, size: int) -> tuple[list[tuple[int, str | None]], int]:
    """(offset of each partition's first non-blank line, number of non-blank lines)."""
    starts: list[tuple[int, str | None]] = []
    n = 0
    with open_input(str(path)) as f:
        for line in iter_lines(f):
            if n % size == 0:
                starts.append((line.offset, None))
            n += 1
    return starts, n


RawItem = tuple[Any, str, str | None, str]  # (value, raw text for rejects, error, drop reason if no good object)


def _read_list(f: BinaryIO, spec: dict[str, Any]) -> Iterator[RawItem]:
    if spec.get("fatal"):
        yield None, "", spec["fatal"], "invalid_json"
        return
    for element in ListScanner(f, spec["offset"], keep_text=True):
        raw = (element.text or "")[:RAW_CHARS].encode("latin-1").decode("utf-8", "replace")
        if element.error is not None:
            yield None, raw, element.error, TOO_LARGE if element.too_large else "invalid_json"
            continue
        try:
            yield element_value(element), raw, None, "invalid_json"
        except JsonRecordError as exc:
            yield None, raw, str(exc), "invalid_json"


def _read_lines(f: BinaryIO, spec: dict[str, Any]) -> Iterator[RawItem]:
    for line in iter_lines(f, spec["offset"]):  # straight to the partition: no rescan from line 0
        raw = line.raw()
        if line.too_large:
            detail = too_large_detail("a line", line.length)
            yield None, raw, detail, TOO_LARGE
            continue
        try:
            yield loads_bytes(line.data), raw, None, "invalid_json"
        except JsonRecordError as exc:
            yield None, raw, str(exc), "invalid_json"
