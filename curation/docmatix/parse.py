"""Model output -> (question, answer) pairs: the published ``Q#:``/``A#:`` parsing, and the JSON form that
structured output produces (``text.JSON_SCHEMA``)."""

from __future__ import annotations

import json
import re
from typing import Any

# The published pattern: a pair runs from "Q<n>:" through "A<n>:" up to the next "Q<n>:" or the end.
# Case-sensitive, so "q1:" is not a question; a "Q" with no "A" after it yields nothing.
_QA = re.compile(r"(Q\d+:\s*.*?)(A\d+:\s*.*?)(?=(Q\d+:)|$)", re.DOTALL)
# Only "Q1: " with exactly one space is removed (published behaviour): "Q1:x" keeps its prefix.
_Q_PREFIX = re.compile(r"^Q\d+: ")
_A_PREFIX = re.compile(r"^A\d+: ")
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\r?\n?(.*?)```", re.DOTALL)


def _clean(question: str, answer: str) -> tuple[str, str]:
    question, answer = question.strip(), answer.strip()
    return _Q_PREFIX.sub("", question, count=1), _A_PREFIX.sub("", answer, count=1)


def parse_qa(text: str) -> list[tuple[str, str]]:
    """Pairs in the order written, exactly as the published script extracted them."""
    return [_clean(q, a) for q, a, _ in _QA.findall(text)]


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
