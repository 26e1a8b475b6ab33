"""Filters of generated question/answer pairs, each discard counted by the name of its rule.

``docmatix-v1`` is the published rule list, patterns unchanged. ``improved`` replaces its ``\\w+\\.\\w+`` rule
(``dotted_word``), which also dropped decimals ("3.5"), abbreviations ("e.g.") and initials, by
``url_or_filename``, which targets what the rule was meant for:

- web addresses: ``http(s)://…``, ``www.…``, and ``name.tld/…`` (any alphabetic TLD followed by a path);
- e-mail addresses: ``name@domain.tld``;
- host names ``name.tld`` for a fixed list of TLDs (generic ones and country codes that are not English
  words: ``.in``, ``.it``, ``.to``, ``.me``, ``.is`` … are left out, so that "end.It" is not a web address);
- file names ``name.ext`` for a fixed list of extensions (documents, images, archives, web pages, data,
  executables; ``.js`` and ``.log`` are left out so that "Node.js" or "end.Log" are kept).

A missing space after a full stop ("done.Next") is a typo, not code: the improved rules keep it (the v1 rules
drop it). ``ip_address`` stays in both lists, before the rule that replaces ``dotted_word``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Literal, NamedTuple

from rapidfuzz import fuzz

from curation.recipe.generation import GroundingConfig

Rules = tuple[tuple[str, re.Pattern[str]], ...]


class FilterResult(NamedTuple):
    kept: list[tuple[str, str]]
    discarded: Counter[str]


def _rule(name: str, pattern: str) -> tuple[str, re.Pattern[str]]:
    return name, re.compile(pattern, re.IGNORECASE)


DOCMATIX_V1_RULES: Rules = (
    _rule("curly_braces", r"\{.*?\}"),
    _rule("square_brackets", r"\[.*?\]"),
    _rule("angle_brackets", r"<.*?>"),
    _rule("ip_address", r"\b\d{1,3}(\.\d{1,3}){3}\b"),
    _rule("dotted_word", r"\w+\.\w+"),
    _rule("blank_line", r"\n\s*\n"),
    _rule("unanswerable", r"unanswerable"),
    _rule("question_marker", r"Q\d+: "),
    _rule("answer_marker", r"A\d+: "),
)

_TLDS = "com|org|net|edu|gov|mil|int|info|biz|io|co|ai|app|dev|xyz|online|site|eu|uk|de|fr|es|nl|ch|se|ru|cn|jp|ca|au"
_EXTENSIONS = (
    "pdf|docx?|xlsx?|xlsm|pptx?|odt|ods|rtf|txt|csv|tsv|json|xml|ya?ml|html?|xhtml|php|aspx?|jsp|css|py|exe|dll|"
    "msi|apk|dmg|iso|bin|zip|rar|7z|gz|tgz|tar|bz2|png|jpe?g|gif|bmp|tiff?|svg|webp|ico|mp3|mp4|wav|avi|mov|mkv|"
    "sql|db|sqlite"
)
# Each branch only tests that such a name occurs (no leading ``[\w-]+``), so a search is linear in the text
# length: a 10,000-character run such as "a.a.a…" would otherwise cost seconds.
_URL_OR_FILENAME = "|".join(
    (
        r"\bhttps?://",
        r"\bwww\.\w",
        r"[\w.+-]@[\w-]+\.\w",
        r"\w\.[a-z]{2,}/\S",
        rf"\w\.(?:{_TLDS})\b",
        rf"[\w-]\.(?:{_EXTENSIONS})\b",
    )
)

# The published parser leaves an empty answer as the bare marker "A1:" (its prefix removal needs a space), which
# v1's marker rules (also needing a space) let through: the improved markers also match at the end of the text.
_IMPROVED = {
    "dotted_word": _rule("url_or_filename", _URL_OR_FILENAME),
    "question_marker": _rule("question_marker", r"Q\d+:(?: |$)"),
    "answer_marker": _rule("answer_marker", r"A\d+:(?: |$)"),
}
IMPROVED_RULES: Rules = tuple(_IMPROVED.get(name, (name, pattern)) for name, pattern in DOCMATIX_V1_RULES)

RULE_SETS: dict[str, Rules] = {"docmatix-v1": DOCMATIX_V1_RULES, "improved": IMPROVED_RULES}

# Patterns that match exactly where the published ones do, searched in linear time: the published lazy and
# greedy runs restart at every "{" (or word character) of a long line with no match, so a 64,000-character
# answer costs half a minute. "{" ... "}" on one line exists iff some "{" is followed by "}" with neither brace
# nor newline between them; "\w+\.\w+" occurs iff "\w\.\w" does.
_LINEAR_TWINS = {
    r"\{.*?\}": re.compile(r"\{[^{}\n]*\}"),
    r"\[.*?\]": re.compile(r"\[[^\[\]\n]*\]"),
    r"<.*?>": re.compile(r"<[^<>\n]*>"),
    r"\w+\.\w+": re.compile(r"\w\.\w"),
}


def _searcher(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return _LINEAR_TWINS.get(pattern.pattern, pattern)


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def _discard_reason(question: str, answer: str, rules: Rules) -> str | None:
    """The first rule, in list order, that matches the question or the answer."""
    if not question.strip() or not answer.strip():
        return "empty"
    for name, pattern in rules:
        search = _searcher(pattern).search
        if search(question) or search(answer):
            return name
    return None


def apply_filters(
    pairs: Iterable[tuple[str, str]],
    rule_set: Literal["docmatix-v1", "improved"],
    source_text: str | None = None,
    grounding: GroundingConfig | None = None,
) -> FilterResult:
    """Keep the pairs no rule matches; with ``grounding``, also drop answers (of at least
    ``min_answer_chars``) whose fuzzy match in ``source_text`` scores below ``min_score`` (``not_grounded``)."""
    rules = RULE_SETS[rule_set]
    if grounding is not None and source_text is None:
        raise ValueError("grounding needs the source text")
    source = _normalise(source_text) if grounding is not None and source_text is not None else ""
    kept: list[tuple[str, str]] = []
    discarded: Counter[str] = Counter()
    for question, answer in pairs:
        reason = _discard_reason(question, answer, rules)
        if reason is None and grounding is not None:
            target = _normalise(answer)
            if len(target) >= grounding.min_answer_chars and fuzz.partial_ratio(target, source) < grounding.min_score:
                reason = "not_grounded"
        if reason is None:
            kept.append((question, answer))
        else:
            discarded[reason] += 1
    return FilterResult(kept, discarded)
