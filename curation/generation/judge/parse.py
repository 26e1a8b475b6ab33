"""Reading a rating out of a judge's reply (untrusted text, already repaired and cut to ``max_reply_chars``).

Accepted, strictly (nothing else is a rating):

- the whole reply (spaces and a Markdown code fence around it allowed) is a JSON object with an integer
  ``rating`` (an integral float such as 4.0 counts);
- its last non-empty line is ``Rating: N`` (case-insensitive; ``=`` for ``:``, ``**`` emphasis, ``N/M`` allowed);
- its last non-empty line is a JSON object with an integer ``rating``.

The whole-reply JSON is read first; with ``json_mode``, a rating read from the last line instead counts as a
JSON fallback.
A rating outside the scale is ``out_of_range``; no rating is ``no_rating``. JSON is parsed only up to
``MAX_JSON_CHARS`` characters, and the last line only up to ``MAX_LINE_CHARS``: the patterns run on bounded,
single-line text in linear time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_JSON_CHARS = 16_384
MAX_LINE_CHARS = 200
_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*)\n```$", re.DOTALL)
_RATING_LINE = re.compile(
    r"^[*_ ]{0,4}rating[*_ ]{0,4}[:=][*_ ]{0,4}(-?\d{1,4}(?:\.0+)?)(?:\s{0,2}/\s{0,2}(\d{1,4}))?[*_ .]{0,4}$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Parsed:
    rating: int | None
    outcome: str  # "ok" | "no_rating" | "out_of_range"
    json_fallback: bool = False  # json_mode, but the rating came from the last line, not a JSON reply


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return int(value)
    return None


def _json_rating(text: str) -> int | None:
    if len(text) > MAX_JSON_CHARS or not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return _integer(data.get("rating")) if isinstance(data, dict) else None


def _whole_json(text: str) -> int | None:
    text = text.strip()
    fenced = _FENCE.match(text) if text.startswith("```") and len(text) <= MAX_JSON_CHARS else None
    return _json_rating(fenced.group(1).strip() if fenced else text)


def _last_line(text: str) -> str:
    line = text.rstrip()[-(MAX_LINE_CHARS + 1) :].rpartition("\n")[2].strip()
    return line if len(line) <= MAX_LINE_CHARS else ""


def _line_rating(line: str, high: int) -> int | None:
    """``Rating: N`` or ``Rating: N/high``; a rating out of another denominator (``3/10`` on a 1-5 scale) is
    not on the scale: no rating, never a rescaled or misread one."""
    match = _RATING_LINE.match(line)
    if match:
        if match.group(2) is not None and int(match.group(2)) != high:
            return None
        return int(float(match.group(1)))
    return _json_rating(line)


def parse_rating(text: str, low: int, high: int, json_mode: bool = False) -> Parsed:
    """The rating in ``text`` on the scale ``low``..``high``, or why there is none."""
    whole = _whole_json(text)
    line = _line_rating(_last_line(text), high) if whole is None else None
    rating = whole if whole is not None else line
    if rating is None:
        return Parsed(None, "no_rating")
    if not low <= rating <= high:
        return Parsed(None, "out_of_range")
    return Parsed(rating, "ok", json_fallback=json_mode and whole is None)
