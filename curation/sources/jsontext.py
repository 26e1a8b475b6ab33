"""Input JSON, strictly and within bounds: what a line is, and how one record's text becomes a value.

Every JSON-reading reader goes through here, so a hostile record (a 5,000-digit integer, nesting 950 deep,
NaN, duplicate keys, invalid UTF-8, a 50 MB line) fails in one way: :class:`JsonRecordError`, a drop with
the reason in its detail, never an exception that escapes the reader.

A line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (Python's universal newlines); blank lines are not
records. ``plan()`` and ``read()`` both split files with :func:`iter_lines`, so they always agree on the
rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

MAX_RECORD_BYTES = 16 << 20  # a longer line or list element is a drop, read past without being held
MAX_DEPTH = 100  # deeper values would exhaust the recursion of whatever walks them next (meta, encoders)
RAW_BYTES = 10_000  # how much of a bad record a reject keeps
CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"

TOO_LARGE = "record_too_large"  # the drop reason of a record over MAX_RECORD_BYTES
# What a strict parse refuses (the detail of an ``invalid_json`` drop says which).
REFUSED = (
    "not JSON, invalid UTF-8, `NaN`/`Infinity`, a key repeated in an object, an integer of more than 4,300 digits, "
    f"nesting deeper than {MAX_DEPTH} levels, or a value that is not an object"
)


class JsonRecordError(ValueError):
    """One record's text is not a JSON value this toolkit accepts; the message says why."""


def _reject_constant(name: str) -> Any:
    raise JsonRecordError(f"{name} is not valid JSON (not a number)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRecordError(f"duplicate key {key[:200]!r} in an object")
            seen.add(key)
    return obj


DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
"""Strict: no NaN/Infinity, no duplicate keys (the standard library takes the last one silently)."""


_JSON_TYPES = {list: "array", str: "string", bool: "boolean", type(None): "null"}


def not_an_object(value: Any) -> str:
    """The drop detail of a record that parsed but is not an object."""
    return f"a JSON {_JSON_TYPES.get(type(value), 'number')}, not an object"


def too_large_detail(what: str, size: int) -> str:
    """The drop detail of a record over MAX_RECORD_BYTES (``what``: a line, an element)."""
    return f"{what} of {size:,} bytes, over the {MAX_RECORD_BYTES >> 20} MiB limit; not parsed"


def error_text(exc: BaseException) -> str:
    """The drop detail of a failed parse: the error's own words, with its type when it is not ours."""
    if isinstance(exc, JsonRecordError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return f"nested deeper than {MAX_DEPTH} levels"
    return f"{type(exc).__name__}: {exc}"


def too_deep(value: Any, text: str) -> bool:
    """Whether ``value`` nests deeper than MAX_DEPTH. ``text`` (its JSON) is a cheap bound first: a record
    with fewer brackets than that cannot be that deep, so a walk happens only for bracket-heavy records."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > MAX_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def check_depth(value: Any, text: str) -> Any:
    """``value``, or JsonRecordError when it nests too deep."""
    if isinstance(value, dict | list) and too_deep(value, text):
        raise JsonRecordError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def loads(text: str) -> Any:
    """One record's JSON text as a value; raises JsonRecordError."""
    try:
        value = DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer past the digit limit, ours
        raise JsonRecordError(error_text(exc)) from None
    return check_depth(value, text)


def loads_bytes(data: bytes) -> Any:
    """One record's bytes as a value: strict UTF-8 (no lone surrogates), then :func:`loads`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRecordError(error_text(exc)) from None
    return loads(text)


# ---- lines ------------------------------------------------------------------------------------------------
class Line(NamedTuple):
    """A non-blank line: where it starts, its bytes without the line end, and its length. A line over
    MAX_RECORD_BYTES keeps only its first RAW_BYTES (``too_large``)."""

    offset: int
    data: bytes
    length: int

    @property
    def too_large(self) -> bool:
        return self.length > MAX_RECORD_BYTES

    def raw(self) -> str:
        """The line's start as text, for rejects."""
        return self.data[:RAW_BYTES].decode("utf-8", "replace")


class _Partial:
    """A line that goes on past the chunk read so far: its bytes while it fits the cap, then only its head
    and a count."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.parts: list[bytes] = []
        self.length = 0
        self.blank = True

    def add(self, piece: bytes) -> None:
        if self.blank and piece and not piece.isspace():
            self.blank = False
        if self.length + len(piece) <= MAX_RECORD_BYTES:
            self.parts.append(piece)
        elif self.length <= MAX_RECORD_BYTES:  # just went over: keep the head only
            head = bytearray()
            for part in [*self.parts, piece]:
                head += part[: RAW_BYTES - len(head)]
            self.parts = [bytes(head)]
        self.length += len(piece)

    def line(self) -> Line | None:
        return None if self.blank else Line(self.offset, b"".join(self.parts), self.length)


def iter_lines(f: BinaryIO, offset: int = 0) -> Iterator[Line]:
    """The non-blank lines of a binary file from ``offset`` (a line start). At the start of the file a UTF-8
    byte order mark is skipped. Memory stays within MAX_RECORD_BYTES + CHUNK whatever the line lengths."""
    f.seek(offset)
    if offset == 0 and f.read(len(BOM)) != BOM:
        f.seek(0)
    pos = f.tell()
    partial: _Partial | None = None  # a line begun in an earlier chunk
    while chunk := f.read(CHUNK):
        for piece in chunk.splitlines(keepends=True):  # splits at \n, \r\n and \r, as Python's text mode does
            body = piece.rstrip(b"\r\n")
            ended = len(body) < len(piece)
            if partial is None and ended:  # a whole line within the chunk: the common case
                if body and not body.isspace():
                    yield Line(pos, body if len(body) <= MAX_RECORD_BYTES else body[:RAW_BYTES], len(body))
            else:
                if partial is None:
                    partial = _Partial(pos)
                partial.add(body)
                if ended:
                    line = partial.line()
                    partial = None
                    if line is not None:
                        yield line
            pos += len(piece)
    if partial is not None and (line := partial.line()) is not None:
        yield line
