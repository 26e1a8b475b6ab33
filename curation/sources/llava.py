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

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from curation.errors import CurationError
from curation.sample import Drop, Sample
from curation.sources.base import (
    IMAGE_FILE_DROP_REASONS,
    RECORD_DROP_REASONS,
    Partition,
    Reader,
    default_key,
    expand_inputs,
    image_file_drop_reason,
    load_image_file,
    sanitize_key,
    to_jsonable,
)
from curation.sources.jsontext import (
    BOM,
    DECODER,
    MAX_RECORD_BYTES,
    REFUSED,
    TOO_LARGE,
    JsonRecordError,
    check_depth,
    error_text,
    iter_lines,
    loads_bytes,
    not_an_object,
    too_large_detail,
)
from schemas import RecordError, parse_record

CHUNK = 1 << 20
RAW_CHARS = 10_000  # how much of a bad element/line a reject keeps

_NON_WS = re.compile(r"[^ \t\n\r]")
_STRUCT = re.compile(r'["\[\]{}]')
_STRING_STOP = re.compile(r'["\\]')
_SCALAR_END = re.compile(r"[,\]\s]")
_IMAGE_TAG = re.compile(r"\s*<image>\s*")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ---- streaming a JSON list ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Element:
    """One item of a JSON list: where it starts, its value or why it could not be parsed. ``fatal``: the rest
    of the file is unreadable (this is then the last element)."""

    start: int
    value: Any = None
    error: str | None = None
    fatal: bool = False
    text: str | None = None  # the element's bytes as Latin-1 text, when asked for (its head when too large)
    too_large: bool = False


def list_start(f: BinaryIO) -> int | None:
    """Offset just after the opening ``[`` of a JSON list file; None when the file is empty."""
    head = f.read(4096)
    skip = len(BOM) if head.startswith(BOM) else 0
    m = re.compile(rb"[^ \t\n\r]").search(head, skip)
    if m is None:
        if len(head) < 4096:
            return None
        raise CurationError(f"{getattr(f, 'name', 'input')}: starts with 4 KiB of whitespace; not a JSON list")
    if head[m.start() : m.start() + 1] != b"[":
        raise CurationError(f"{getattr(f, 'name', 'input')}: not a JSON list (starts with {head[m.start() :][:20]!r})")
    return m.start() + 1


class ListScanner:
    """Elements of a JSON list from ``offset`` on (just after ``[``, or the start of an element).

    An element that is not valid JSON but whose brackets and strings balance is an error element and the scan
    goes on after it; when the structure itself breaks (an unclosed string or bracket, a missing comma), one
    ``fatal`` element covers the rest of the file.
    """

    def __init__(self, f: BinaryIO, offset: int, keep_text: bool = False) -> None:
        f.seek(offset)
        self.f = f
        self.base = offset  # file offset of buf[0]
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.keep_text = keep_text

    def __iter__(self) -> Iterator[Element]:
        while True:
            ch = self._skip_ws()
            if ch is None:
                yield self._fatal("the file ends before the list's closing ']'")
                return
            if ch == "]":  # also accepts a trailing comma before it
                self.pos += 1
                if self._skip_ws() is not None:
                    yield self._fatal("data after the list's closing ']'")
                return
            element = self._element()
            yield element
            if element.fatal:
                return
            ch = self._skip_ws()
            if ch == ",":
                self.pos += 1
            elif ch != "]":
                yield self._fatal(
                    "the file ends before the list's closing ']'"
                    if ch is None
                    else f"expected ',' or ']' after the element, found {ch!r}"
                )
                return

    def _more(self) -> bool:
        """Append the next chunk (as much as is buffered: growth is geometric, but never much past the record
        limit: a pending element that long is skipped, not held); False at end of file."""
        if self.eof:
            return False
        if self.pos > CHUNK:  # drop what is consumed
            self.buf = self.buf[self.pos :]
            self.base += self.pos
            self.pos = 0
        pending = len(self.buf) - self.pos
        data = self.f.read(max(CHUNK, min(pending, MAX_RECORD_BYTES + 1 - pending)))
        if not data:
            self.eof = True
            return False
        self.buf += data.decode("latin-1")
        return True

    def _skip_ws(self) -> str | None:
        """The next non-whitespace character (not consumed), or None at the end of the file."""
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m is not None:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._more():
                return None

    def _fatal(self, detail: str, start: int | None = None) -> Element:
        """The last element: the rest of the file from ``start`` (default: here) cannot be read."""
        at = self.base + self.pos if start is None else start
        return Element(at, error=f"{detail}; the file is unreadable from byte {at} on", fatal=True)

    def _element(self) -> Element:
        start = self.base + self.pos
        while True:
            error = None
            try:
                value, end = DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                error = f"{exc.msg} at byte {self.base + exc.pos}"
            except (ValueError, RecursionError) as exc:  # an integer past the digit limit, NaN, a duplicate key
                error = error_text(exc)
            else:
                if end < len(self.buf) or self.eof or self.buf[self.pos] in '[{"':
                    return self._take(start, end, value=value)
                self._more()  # a number or literal at the end of the buffer may go on in the next chunk
                continue
            end = _Span(self.buf[self.pos]).end(self.buf, self.pos)
            if end is not None:  # the whole element is buffered: its content is broken, its structure is not
                return self._take(start, end, error=error or "invalid JSON")
            if len(self.buf) - self.pos > MAX_RECORD_BYTES:
                return self._skip_large(start)
            if not self._more():
                return self._fatal(f"an element never ends: {error or 'truncated'}")

    def _take(self, start: int, end: int, **kw: Any) -> Element:
        if end - self.pos > MAX_RECORD_BYTES:  # parsed whole, as the buffer grew past the limit: still too large
            head = self.buf[self.pos : self.pos + RAW_CHARS] if self.keep_text else None
            size, self.pos = end - self.pos, end
            return Element(start, error=too_large_detail("an element", size), text=head, too_large=True)
        text = self.buf[self.pos : end] if self.keep_text else None
        self.pos = end
        return Element(start, text=text, **kw)

    def _skip_large(self, start: int) -> Element:
        """Past an element over MAX_RECORD_BYTES without holding it: its structure alone is followed, chunk by
        chunk, to where it ends."""
        head = self.buf[self.pos : self.pos + RAW_CHARS] if self.keep_text else None
        span = _Span(self.buf[self.pos])
        i = self.pos
        while (end := span.end(self.buf, i)) is None:
            self.base += len(self.buf)
            self.buf, self.pos, i = "", 0, 0
            if not self._more():
                return self._fatal("an element never ends", start)
        self.pos = end
        return Element(start, error=too_large_detail("an element", self.base + end - start), text=head, too_large=True)


class _Span:
    """Where a JSON value ends, judged by brackets and strings alone (its content may be invalid JSON). Keeps
    its state between calls, so a value can be followed across buffers without holding them."""

    def __init__(self, first: str) -> None:
        self.scalar = first not in '[{"'  # a bare word or number: up to the next separator
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the buffer ended just after a backslash inside a string

    def end(self, buf: str, i: int) -> int | None:
        """The index just past the value, or None when ``buf`` ends first (call again with the next buffer)."""
        if self.scalar:
            m = _SCALAR_END.search(buf, i)
            return m.start() if m else None
        while True:
            if self.escaped:
                if i >= len(buf):
                    return None
                i, self.escaped = i + 1, False
            if self.in_string:
                s = _STRING_STOP.search(buf, i)
                if s is None:
                    return None
                i = s.end()
                if s.group() == "\\":
                    self.escaped = True
                    continue
                self.in_string = False
                if self.depth <= 0:
                    return i
                continue
            m = _STRUCT.search(buf, i)
            if m is None:
                return None
            ch, i = m.group(), m.end()
            if ch == '"':
                self.in_string = True
            elif ch in "[{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return i


def element_value(element: Element) -> Any:
    """The element's value decoded as UTF-8 (the scan decoded it as Latin-1). Raises JsonRecordError."""
    assert element.text is not None
    if element.text.isascii():
        return check_depth(element.value, element.text)
    return loads_bytes(element.text.encode("latin-1"))


# ---- conversations ------------------------------------------------------------------------------------------
class Malformed(ValueError):
    """A record that cannot become an sft record; ``reason`` is the drop reason."""

    def __init__(self, detail: str, reason: str = "malformed_conversation") -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass
class Conversation:
    """What a LLaVA-style row holds, before its images are loaded."""

    image_refs: list[str]
    image_value: Any
    turns: list[dict[str, str]]
    system: str | None
    used: set[str] = field(default_factory=set)


def strip_image_tags(text: str) -> str:
    """Remove ``<image>`` placeholders with their adjoining newline(s): a tag between lines leaves one newline,
    one inside a line a space."""
    if "<image>" not in text:
        return text
    return _IMAGE_TAG.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


def _image_refs(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    refs = value if isinstance(value, list) else [value]
    if not all(isinstance(r, str) and r for r in refs):
        raise Malformed(
            f"{name!r} must be a path or a list of paths, got {json.dumps(value)[:200]}", "invalid_image_field"
        )
    return refs


def _role_and_text(item: Any, i: int) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise Malformed(f"turn {i} is a {type(item).__name__}, not an object")
    if "from" in item:
        raw_role, text = item["from"], item.get("value")
    elif "role" in item:
        raw_role, text = item["role"], item.get("content")
    else:
        raise Malformed(f"turn {i} has neither 'from' nor 'role'")
    role = _ROLES.get(raw_role.lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise Malformed(f"turn {i} has an unknown role {raw_role!r}")
    if not isinstance(text, str):
        raise Malformed(f"turn {i} ({raw_role}) has a {type(text).__name__} value, not a string")
    return role, text


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def parse_turns(conversation: Any, name: str = "conversations") -> tuple[list[dict[str, str]], str | None]:
    """(user/assistant turns, leading system prompt) of a ShareGPT (``from``/``value``) or chat (``role``/
    ``content``) list, or of plain alternating strings (LIMA). Raises :class:`Malformed` naming what is wrong."""
    if not isinstance(conversation, list):
        raise Malformed(f"{name!r} is a {type(conversation).__name__}, not a list")
    if not conversation:
        raise Malformed(f"{name!r} is empty")
    if all(isinstance(item, str) for item in conversation):  # LIMA: alternating user/assistant strings
        roles = ("user", "assistant")
        items = [(roles[i % 2], item) for i, item in enumerate(conversation)]
    else:
        items = [_role_and_text(item, i) for i, item in enumerate(conversation)]
    system = None
    first = 0
    if items[0][0] == "system":
        system, first = items[0][1], 1
    if first == len(items):
        raise Malformed(f"{name!r} holds only a system turn")
    turns: list[dict[str, str]] = []
    for i in range(first, len(items), 2):
        role, text = items[i]
        if role != "user":
            if i == first:
                raise Malformed(f"the conversation starts with {_a(role)} turn (turn {i})")
            raise Malformed(f"turn {i} is {_a(role)} turn where a user turn belongs")
        if i + 1 == len(items):
            raise Malformed(f"the last user turn (turn {i}) has no answer")
        next_role, answer = items[i + 1]
        if next_role == "user":
            raise Malformed(f"two user turns in a row (turns {i} and {i + 1})")
        if next_role != "assistant":
            raise Malformed(f"turn {i + 1} is {_a(next_role)} turn where an assistant turn belongs")
        turns.append({"user": text, "assistant": answer})
    return turns, system


def _string_field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise Malformed(f"field {name!r} is {what}")
    return value


def parse_conversation(row: dict[str, Any], fields: dict[str, str]) -> Conversation:
    """A LLaVA-style row as a :class:`Conversation`; raises :class:`Malformed`. ``fields`` maps key, image,
    conversations, user, assistant and system to the row's field names."""
    key_name = fields.get("key", "id")
    image_name = fields.get("image") or next((n for n in ("image", "images") if n in row), "image")
    used = {key_name, image_name}
    image_value = row.get(image_name)
    refs = _image_refs(image_value, image_name)
    system: str | None = None
    if "user" in fields:  # single-turn instruction records (MetaMathQA, Alpaca)
        used |= {fields["user"], fields["assistant"]}
        user, assistant = _string_field(row, fields["user"]), _string_field(row, fields["assistant"])
        turns = [{"user": user, "assistant": assistant}]
    else:
        conv_name = fields.get("conversations")
        if conv_name is None:
            conv_name = next((n for n in ("conversations", "messages") if n in row), None)
            if conv_name is None:
                raise Malformed("no 'conversations' or 'messages' list")
        elif conv_name not in row:
            raise Malformed(f"no {conv_name!r} field")
        used.add(conv_name)
        turns, system = parse_turns(row[conv_name], conv_name)
    if "system" in fields:
        used.add(fields["system"])
        column = row.get(fields["system"])
        if system is None and isinstance(column, str) and column:
            system = column
    if refs:
        for t in turns:
            t["user"] = strip_image_tags(t["user"])
    return Conversation(refs, image_value, turns, system, used)


# ---- the reader ---------------------------------------------------------------------------------------------
def _file_format(path: Path) -> str:
    """``list`` (one JSON list) or ``lines`` (JSON lines: ``.jsonl``, or a ``.json`` whose first line is one
    object: it starts with ``{`` and ends with ``}``, valid or not). Loud for a ``.json`` that is neither (e.g.
    one pretty-printed object)."""
    if path.name.endswith(".jsonl"):
        return "lines"
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(BOM).lstrip()
        if not head.startswith(b"{"):
            return "list"
        first = next(iter_lines(f), None)  # a line, as the reader splits them (bounded in length)
    if first is not None and (first.too_large or first.data.strip().endswith(b"}")):
        return "lines"
    raise CurationError(f"{path}: neither a JSON list nor JSON lines (one object per line)")


class LlavaReader(Reader):
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
        for file_index, path in enumerate(expand_inputs(self.source.path, (".json", ".jsonl"), self.source.name)):
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
            with open(spec["file"], "rb") as f:
                raw_items = _read_lines(f, spec) if spec["format"] == "lines" else _read_list(f, spec)
                for raw_item in islice(raw_items, rows):
                    yield self._item(spec, ordinal, raw_item)
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


def _plan_list(path: Path, size: int) -> tuple[list[tuple[int, str | None]], int]:
    """(offset and fatal error of each partition's first element, number of elements)."""
    starts: list[tuple[int, str | None]] = []
    n = 0
    with open(path, "rb") as f:
        offset = list_start(f)
        if offset is None:
            return [], 0
        for element in ListScanner(f, offset):
            if n % size == 0:
                starts.append((element.start, element.error if element.fatal else None))
            n += 1
    return starts, n


def _plan_lines(path: Path, size: int) -> tuple[list[tuple[int, str | None]], int]:
    """(offset of each partition's first non-blank line, number of non-blank lines)."""
    starts: list[tuple[int, str | None]] = []
    n = 0
    with open(path, "rb") as f:
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
