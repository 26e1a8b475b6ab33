"""Model output -> (question, answer) pairs: the published ``Q#:``/``A#:`` parsing, and the JSON form that
structured output produces (``text.JSON_SCHEMA``)."""

from __future__ import annotations

import json
import re
from typing import Any

# The published pattern: a pair runs from "Q<n>:" through "A<n>:" up to the next "Q<n>:" or the end.
# Case-sensitive, so "q1:" is not a question; a "Q" with no "A" after it yields nothing.
PUBLISHED_QA = re.compile(r"(Q\d+:\s*.*?)(A\d+:\s*.*?)(?=(Q\d+:)|$)", re.DOTALL)
_Q = re.compile(r"Q\d+:")
_A = re.compile(r"A\d+:")
_SPACE = re.compile(r"\s*")
# Only "Q1: " with exactly one space is removed (published behaviour): "Q1:x" keeps its prefix.
_Q_PREFIX = re.compile(r"^Q\d+: ")
_A_PREFIX = re.compile(r"^A\d+: ")
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\r?\n?(.*?)```", re.DOTALL)


def _clean(question: str, answer: str) -> tuple[str, str]:
    question, answer = question.strip(), answer.strip()
    return _Q_PREFIX.sub("", question, count=1), _A_PREFIX.sub("", answer, count=1)


def _answer_end(text: str, start: int) -> int:
    """Where the published pattern's answer group ends when its greedy ``\\s*`` stops at ``start``: the first
    position from there that begins a "Q<n>:" or where ``$`` holds (the end, or before a final newline)."""
    following = _Q.search(text, start)
    if following is not None:
        return following.start()
    return len(text) - 1 if text.endswith("\n") and start < len(text) else len(text)


def _published_matches(text: str) -> list[tuple[str, str]]:
    """``PUBLISHED_QA.findall`` (its two first groups) in linear time: the pattern itself backtracks over the
    rest of the text at every "Q<n>:" that no "A<n>:" follows, quadratic on hostile output."""
    pairs: list[tuple[str, str]] = []
    position = 0
    while (question := _Q.search(text, position)) is not None:
        answer = _A.search(text, question.end())
        if answer is None:  # no later "Q<n>:" can find an "A<n>:" either
            break
        end = _answer_end(text, _SPACE.match(text, answer.end()).end())  # type: ignore[union-attr]
        pairs.append((text[question.start() : answer.start()], text[answer.start() : end]))
        position = end
    return pairs


def parse_qa(text: str) -> list[tuple[str, str]]:
    """Pairs in the order written, exactly as the published script extracted them."""
    return [_clean(q, a) for q, a in _published_matches(text)]


def _pairs(obj: Any) -> list[tuple[str, str]] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("qa"), list):
        return None
    pairs = []
    for item in obj["qa"]:
        if not isinstance(item, dict):
            return None
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            return None
        pairs.append(_clean(question, answer))
    return pairs


def parse_qa_json(text: str) -> list[tuple[str, str]] | None:
    """Pairs from ``{"qa": [{"question": ..., "answer": ...}, ...]}``, also inside a Markdown code fence
    (```` ```json ````); None when the text is not JSON of that shape.

    Extra keys are ignored (an endpoint without strict schema support may add some), and the strings are
    cleaned as ``parse_qa`` cleans its pairs (stripped, a leading ``Q1: ``/``A1: `` removed).
    """
    candidates = [text.strip()]
    fence = _FENCE.search(text)
    if fence:
        candidates.append(fence.group(1).strip())
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        return _pairs(obj)
    return None
