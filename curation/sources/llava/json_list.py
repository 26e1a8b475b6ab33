"""Streaming a JSON list one element at a time, as Latin-1 text: every byte is one character, so string indices
are byte offsets, and UTF-8 multi-byte sequences (all bytes >= 0x80) can never be mistaken for JSON structure."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from curation.errors import CurationError
from curation.sources.jsontext import (
    BOM,
    DECODER,
    MAX_RECORD_BYTES,
    check_depth,
    error_text,
    loads_bytes,
    too_large_detail,
)

CHUNK = 1 << 20
RAW_CHARS = 10_000  # how much of a bad element/line a reject keeps

_NON_WS = re.compile(r"[^ \t\n\r]")
_STRUCT = re.compile(r'["\[\]{}]')
_STRING_STOP = re.compile(r'["\\]')
_SCALAR_END = re.compile(r"[,\]\s]")


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
