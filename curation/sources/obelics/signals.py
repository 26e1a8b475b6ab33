"""Text signals of the OBELICS filters and their word lists.

Definitions shared by every signal below:

- **paragraph**: a text item split on ``"\\n\\n"`` (OBELICS merged consecutive texts with it).
- **special character**: a character that is ASCII punctuation, a digit or whitespace, or whose
  Unicode general category is punctuation (``P*``), symbol (``S*``, which covers emoji, ``©``,
  ``™``, currency, arrows), separator (``Z*``), number (``N*``, e.g. ``²``, ``½``) or other (``C*``:
  control, format such as zero-width joiners, private use, unassigned), plus variation selectors
  (U+FE00–FE0F, U+E0100–E01EF) and the combining keycap U+20E3. This is *not* the original's set:
  the original used a fixed list (ASCII punctuation, digits and whitespace, a list of extra
  characters, and the single-code-point emoji of the ``emoji`` package 1.6.1), which counts some
  letters as special (``π``, ``ø``, ``一``, ``Г``) and misses many symbols (``⊗``, ``≠``, ``✗``,
  ``₹`` and most currency signs, U+2028); ``mode: original`` uses that list
  (``original_special_characters()``).
- **words** (``split_words``): the text is lowercased, split on any run of Unicode whitespace
  (``str.split()``), each token has its leading and trailing special characters stripped, and empty
  tokens are dropped. Inner punctuation stays (``don't``, ``u.s``, ``e-mail``). Pure numbers and
  punctuation-only tokens disappear (``2023``, ``--``, ``$5`` are not words). This is *not* the
  original's word splitting: the original first mapped eleven whitespace characters to a space in the
  text itself (``standardize_whitespace``: NBSP, U+2002–2009 but not all, U+3000, U+FFFC, ``\x84``...),
  then split on space, newline and tab only (``"a\u2028b"``, ``"a\rb"`` are one word there), and
  stripped its own special characters (``original_split_words``, used by ``mode: original``).
- **original mode** (``mode: original`` of the filters): ``standardize_whitespace`` first (the kept
  text is the standardized one), then ``original_split_words`` and ``original_special_characters()``
  everywhere the definitions above say ``split_words`` and special character.
- A **word-list ratio** (stopwords, flagged, common, spam) is ``#words in the list / #words``, each
  occurrence counted; 0.0 for a text without words.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from math import isqrt
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------------------------------
# Word lists


WORDLIST_NAMES = ("stopwords", "flagged_words", "spam_words", "common_words")


def parse_wordlist(text: str) -> frozenset[str]:
    """One word per line; ``#`` comment lines and blank lines ignored; entries lowercased and stripped."""
    return frozenset(w for line in text.splitlines() if (w := line.strip().lower()) and not w.startswith("#"))


def load_wordlist(name: str) -> frozenset[str]:
    """A word list shipped as package data (``curation/sources/obelics/wordlists/NAME.txt``)."""
    if name not in WORDLIST_NAMES:
        raise ValueError(f"unknown word list {name!r}; known: {', '.join(WORDLIST_NAMES)}")
    return parse_wordlist(files("curation.sources.obelics").joinpath("wordlists", f"{name}.txt").read_text("utf-8"))


@dataclass(frozen=True)
class WordLists:
    """The four word lists the text filters use. ``WordLists.default()`` is the package data; the
    shipped common-words list is small (about 1,450 words, see its header), so for real data
    pass a larger one, e.g. ``WordLists.default().replace(common_words=WordLists.read("big.txt"))``."""

    stopwords: frozenset[str]
    flagged_words: frozenset[str]
    spam_words: frozenset[str]
    common_words: frozenset[str]

    @staticmethod
    @cache
    def default() -> WordLists:
        return WordLists(**{name: load_wordlist(name) for name in WORDLIST_NAMES})

    @staticmethod
    def read(path: str | os.PathLike[str]) -> frozenset[str]:
        """A word list file in the package-data format."""
        return parse_wordlist(Path(path).read_text("utf-8"))

    def replace(self, **lists: Iterable[str]) -> WordLists:
        unknown = set(lists) - set(WORDLIST_NAMES)
        if unknown:
            raise ValueError(f"unknown word list(s) {sorted(unknown)}; known: {', '.join(WORDLIST_NAMES)}")
        current = {name: getattr(self, name) for name in WORDLIST_NAMES}
        current.update({k: frozenset(w.lower() for w in v) for k, v in lists.items()})
        return WordLists(**current)


# --------------------------------------------------------------------------------------------------
# Signals

PUNCTUATION = frozenset(",;:?!.")
_ASCII_SPECIAL = string.punctuation + string.digits + string.whitespace
_PUNCT_TOKEN = re.compile(r"[\w']+|[,;:?!.]")


@cache
def is_special_character(ch: str) -> bool:
    """True for a special character (definition in the module docstring)."""
    if ch in _ASCII_SPECIAL:
        return True
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or cp == 0x20E3:
        return True
    return unicodedata.category(ch)[0] in "PSZNC"


def _strip_special(token: str) -> str:
    token = token.strip(_ASCII_SPECIAL)
    if token and not (token[0].isascii() and token[-1].isascii()):
        i, j = 0, len(token)
        while i < j and is_special_character(token[i]):
            i += 1
        while j > i and is_special_character(token[j - 1]):
            j -= 1
        token = token[i:j]
    return token


def split_words(text: str) -> list[str]:
    """The words of ``text``: lowercase, split on whitespace, strip special characters from both ends
    of each token, drop empty tokens. ``split_words("Hello, World! 42 don't")`` is
    ``["hello", "world", "don't"]``."""
    return [w for tok in text.lower().split() if (w := _strip_special(tok))]


def word_count(text: str) -> int:
    """``len(split_words(text))``."""
    return len(split_words(text))


# --------------------------------------------------------------------------------------------------
# The original's definitions (``mode: original``)

# The twelve characters the original mapped to a space before any rule: space, NBSP, the C1 control
# U+0084, U+2002, U+2003, U+2005, U+2008, U+2009, U+200A, U+202F, U+3000, U+FFFC (OBJECT REPLACEMENT CHARACTER).
# Newline, tab, U+2028, U+0085, U+2004, U+2006, U+2007 and the other separators are left as they are.
ORIGINAL_WHITESPACE = frozenset(" \xa0\x84\u2002\u2003\u2005\u2008\u2009\u200a\u202f\u3000\ufffc")
_STANDARDIZE = re.compile("[" + "".join(sorted(ORIGINAL_WHITESPACE - {" "})) + "]")  # a character class: fast


def standardize_whitespace(text: str) -> str:
    """``text`` with each of ``ORIGINAL_WHITESPACE`` replaced by one space (runs are not collapsed,
    newlines and tabs stay): the original applied this to every text before its rules and kept the
    result."""
    return _STANDARDIZE.sub(" ", text)


def _parse_code_points(text: str) -> frozenset[str]:
    return frozenset(
        chr(int(line.split()[0], 16)) for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


@cache
def original_special_characters() -> frozenset[str]:
    """The original's special characters (package data ``wordlists/original_special_characters.txt``):
    ASCII punctuation, digits and whitespace, the original's fixed list of extra characters, and the
    single-code-point emoji of the ``emoji`` package 1.6.1, the version the original pinned. Shipped as
    data rather than a dependency: ``emoji`` 2.x has no ``UNICODE_EMOJI`` and a different emoji set."""
    resource = files("curation.sources.obelics").joinpath("wordlists", "original_special_characters.txt")
    return _parse_code_points(resource.read_text("utf-8"))


def _strip_original(token: str, special: AbstractSet[str]) -> str:
    i, j = 0, len(token)
    while i < j and token[i] in special:
        i += 1
    while j > i and token[j - 1] in special:
        j -= 1
    return token[i:j]


def original_split_words(text: str) -> list[str]:
    """The words as the original counted them: split on space, newline and tab only (empty pieces
    dropped), lowercase, strip ``original_special_characters()`` from both ends, drop empty words.
    Give it a ``standardize_whitespace``-d text to reproduce the original (its filters always did):
    ``original_split_words("a\\u2028b π-day")`` is ``["a\\u2028b", "π-day"]``, and ``"ø"`` alone is no word."""
    special = original_special_characters()
    tokens = text.replace("\n", " ").replace("\t", " ").split(" ")  # the original split on these three only
    return [w for tok in tokens if tok and (w := _strip_original(tok.lower(), special))]


def original_special_characters_ratio(text: str) -> float:
    """Share of the characters of ``text`` in ``original_special_characters()``; 0.0 for an empty text."""
    if not text:
        return 0.0
    return sum(map(original_special_characters().__contains__, text)) / len(text)


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Character n-gram repetition, as the original OBELICS/BigScience filter defines it.

    Take every character n-gram of the raw text (overlapping, ``len(text) - n + 1`` of them, no
    normalization). Let ``D`` be the number of distinct n-grams and ``R`` the number of distinct
    n-grams occurring more than once. With ``k = min(floor(sqrt(D)), R)``, the ratio is the number of
    occurrences of the ``k`` most frequent n-grams divided by the number of n-gram occurrences. 0.0
    for a text shorter than ``n`` or without repeated n-grams. (Counting only the top ``sqrt(D)``
    n-grams keeps long texts, which naturally repeat some n-grams, from being penalized for that.)

    Example: ``"0123456789" * 2`` with n=10 has 11 n-grams, 10 distinct, one of them (``"0123456789"``)
    twice: k = min(3, 1) = 1, ratio = 2/11.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = len(text) - n + 1
    if total <= 0:
        return 0.0
    counts = Counter(text[i : i + n] for i in range(total))
    freqs = sorted(counts.values(), reverse=True)
    repeated = sum(1 for f in freqs if f > 1)
    k = min(isqrt(len(freqs)), repeated)
    return sum(freqs[:k]) / total


def repeated_ngram_ratio(words: Sequence[str], n: int) -> float:
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(total))
    return sum(f for f in counts.values() if f > 1) / total


def word_repetition_ratio(text: str, n: int = 5) -> float:
    """Word n-gram repetition, as the original defines it: over the ``split_words`` words, take every
    word n-gram (overlapping, ``#words - n + 1`` of them); the ratio is the number of n-gram
    occurrences whose n-gram occurs more than once, divided by the number of n-gram occurrences.
    0.0 for fewer than ``n`` words.

    Example: 6 words ``a b c d e a`` with n=5 have two different 5-grams: 0.0. ``a b c d e a b c d e``
    has six 5-grams, of which ``a b c d e`` occurs twice: 2/6.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return repeated_ngram_ratio(split_words(text), n)


def special_characters_ratio(text: str) -> float:
    """Number of special characters (whitespace included) divided by ``len(text)``, on the raw text;
    0.0 for an empty text. Ordinary English prose scores about 0.2 (spaces alone are ~17%)."""
    if not text:
        return 0.0
    return sum(1 for ch in text if is_special_character(ch)) / len(text)


def vocabulary_ratio(words: Sequence[str], vocabulary: AbstractSet[str]) -> float:
    if not words:
        return 0.0
    return sum(1 for w in words if w in vocabulary) / len(words)


def stopwords_ratio(text: str, stopwords: AbstractSet[str] | None = None) -> float:
    """Share of ``split_words`` words that are stopwords (default: the package list)."""
    return vocabulary_ratio(split_words(text), WordLists.default().stopwords if stopwords is None else stopwords)


def flagged_words_ratio(text: str, flagged_words: AbstractSet[str] | None = None) -> float:
    """Share of ``split_words`` words that are flagged (adult-content) words (default: the package list)."""
    return vocabulary_ratio(
        split_words(text), WordLists.default().flagged_words if flagged_words is None else flagged_words
    )


def common_words_ratio(text: str, common_words: AbstractSet[str] | None = None) -> float:
    """Share of ``split_words`` words that are common English words (default: the package list)."""
    return vocabulary_ratio(
        split_words(text), WordLists.default().common_words if common_words is None else common_words
    )


def spam_words_ratio(text: str, spam_words: AbstractSet[str] | None = None) -> float:
    """Share of ``split_words`` words that are spam/boilerplate words (default: the package list)."""
    return vocabulary_ratio(split_words(text), WordLists.default().spam_words if spam_words is None else spam_words)


def punctuation_tokens(text: str) -> list[str]:
    """The punctuation tokenization of the original: ``re.findall(r"[\\w']+|[,;:?!.]", text)``, i.e.
    runs of word characters/apostrophes (Unicode ``\\w``: letters, digits, underscore) and single
    ``, ; : ? ! .`` marks; every other character is ignored."""
    return _PUNCT_TOKEN.findall(text)


def punctuation_ratio(text: str) -> float:
    """Share of ``punctuation_tokens`` that are one of ``, ; : ? ! .``; 0.0 without tokens.

    ``"Hello, world."`` has tokens ``Hello , world .``: 2/4 = 0.5. The filters apply the paragraph
    rule only to paragraphs with at least ``punctuation_min_tokens`` (12) tokens, as the original did
    (it counted these tokens, marks included; a paragraph that fails the 0.001 threshold has no
    marks, so for it this is the same as counting ``[\\w']+`` words). One difference: a paragraph
    without any token is skipped here, while the original scored it 0.0 before looking at the token
    count, so it failed; ``mode: original`` does the same. (Such a paragraph has words only where its
    words hold no letter or digit, e.g. ``"⊗ ⊗ ⊗ ⊗"`` for the original's special characters.)
    """
    tokens = punctuation_tokens(text)
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if t in PUNCTUATION) / len(tokens)


def text_signals(text: str, wordlists: WordLists | None = None, char_n: int = 10, word_n: int = 5) -> dict:
    """Every signal of ``text`` at once (for audits and threshold tuning)."""
    wl = wordlists or WordLists.default()
    words = split_words(text)
    return {
        "words": len(words),
        "char_repetition": char_repetition_ratio(text, char_n),
        "word_repetition": repeated_ngram_ratio(words, word_n),
        "special_characters": special_characters_ratio(text),
        "stopwords": vocabulary_ratio(words, wl.stopwords),
        "flagged_words": vocabulary_ratio(words, wl.flagged_words),
        "punctuation": punctuation_ratio(text),
        "punctuation_tokens": len(punctuation_tokens(text)),
        "common_words": vocabulary_ratio(words, wl.common_words),
        "spam_words": vocabulary_ratio(words, wl.spam_words),
    }
