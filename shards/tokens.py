"""The fast default token counter: words and punctuation marks (a tokenizer-free approximation)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

TokenCounter = Callable[[str], int]


def count_tokens(text: str) -> int:
    """Number of word and punctuation tokens in ``text``."""
    return len(_TOKEN_RE.findall(text))


def count_many(counter: TokenCounter, texts: Iterable[str]) -> int:
    return sum(counter(t) for t in texts if t)
