"""Model output is untrusted input: bounds and repairs applied where an engine's reply enters the pipeline.

A reply's text may hold anything an HTTP body or a sampler can: lone surrogates (legal ``\\ud800`` escapes in
JSON, unencodable as UTF-8), NUL/ESC/BEL and other C0/C1 control characters, megabytes from a server that
ignores ``max_tokens``, token counts that are no counts. ``sanitize_generation`` turns any of it into a
``Generation`` that can be stored, parsed and written, and names each repair it made (``Generation.repairs``):

- ``truncated``: the text was longer than ``max_reply_chars(max_tokens)``; it is cut there (the step drops the
  document as ``generation_too_long``);
- ``invalid_unicode``: lone surrogates replaced by U+FFFD (split surrogate pairs are joined);
- ``control_chars``: C0/C1 control characters and DEL removed (``\\n`` and ``\\t`` kept; ``\\r\\n`` and a lone
  ``\\r`` become ``\\n``);
- ``invalid_metadata``: token counts or the finish reason were not what the API promises (replaced by 0 or
  ``"unknown"``).

Repairs are idempotent: a cleaned generation is stored as such, and cleaning it again changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # engines.base uses clean_text: no import cycle at run time
    from curation.generation.engines.base import Generation

CHARS_PER_TOKEN = 32  # generous: English averages about 4 characters a token, long merges reach about 16
MIN_REPLY_CHARS = 4096
RESPONSE_BYTES_FLOOR = 32 * 1024 * 1024  # an HTTP body larger than this is not read (memory)
MAX_TOKEN_COUNT = 1 << 31  # usage counts at or above this are not counts (and would overflow SQLite)
MAX_FINISH_REASON_CHARS = 40

_SURROGATE = re.compile("[\ud800-\udfff]")
_NEWLINE = re.compile("\r\n?")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # after _NEWLINE: no \r is left


def max_reply_chars(max_tokens: int) -> int:
    """The longest reply text accepted for a request of ``max_tokens``; longer ones are cut and flagged."""
    return max(MIN_REPLY_CHARS, max_tokens * CHARS_PER_TOKEN)


def max_response_bytes(max_tokens: int) -> int:
    """The largest HTTP response body read for a request of ``max_tokens`` (JSON escapes take up to 6 bytes a
    character); a larger body is a failure (``response_too_large``), not read into memory."""
    return max(RESPONSE_BYTES_FLOOR, 8 * max_reply_chars(max_tokens))


def replace_surrogates(text: str) -> str:
    """``text`` that UTF-8 can encode: lone surrogates become U+FFFD (a pair split in two is joined)."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_text(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` with lone surrogates replaced and control characters removed, and the repairs made."""
    repairs: list[str] = []
    encodable = replace_surrogates(text)
    if encodable is not text:
        text = encodable
        repairs.append("invalid_unicode")
    cleaned = _CONTROL.sub("", _NEWLINE.sub("\n", text))
    if cleaned != text:
        repairs.append("control_chars")
    return cleaned, tuple(repairs)


def _count(value: Any) -> int | None:
    """A token count as an int, or None when the value is no plausible count."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKEN_COUNT:
        return None
    return value


def _finish_reason(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > MAX_FINISH_REASON_CHARS:
        return None
    cleaned, repairs = clean_text(value)
    return None if repairs else cleaned


def sanitize_generation(generation: Generation, max_chars: int) -> Generation | None:
    """The generation made safe to store and parse, its repairs added to ``repairs`` (sorted, unique);
    None when its text is not a string at all."""
    if not isinstance(generation.text, str):
        return None
    repairs = set(generation.repairs)
    text = generation.text
    if len(text) > max_chars:
        text = text[:max_chars]
        repairs.add("truncated")
    text, cleaned = clean_text(text)
    repairs.update(cleaned)
    prompt_tokens, completion_tokens = _count(generation.prompt_tokens), _count(generation.completion_tokens)
    finish_reason = _finish_reason(generation.finish_reason)
    if prompt_tokens is None or completion_tokens is None or finish_reason is None:
        repairs.add("invalid_metadata")
    return replace(
        generation,
        text=text,
        prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens or 0,
        finish_reason=finish_reason or "unknown",
        repairs=tuple(sorted(repairs)),
    )
