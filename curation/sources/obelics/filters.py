"""Quality filters for OBELICS web documents: the original OBELICS paragraph-, document- and
image-level rules (the paper's thresholds; docs/sources.md, "obelics"), as pure functions over the text
signals of ``signals.py``.

Thresholds are inclusive: ``max_*`` passes at equality, ``min_*`` passes at equality. The spam rule
drops a paragraph at ``ratio >= spam_words_drop_at`` (as the original kept ``ratio < 0.12``).

Two modes (``ObelicsFilterConfig.mode``, the recipe's ``sources.<name>.filters.mode``): ``improved`` (the
default) and ``original``, which reproduces the decisions and the kept text of the original OBELICS code
(its whitespace standardization, word splitting and special characters, its image-size parsing, and its
order of steps: paragraph and image rules, document rules, then corpus-wide URL removal, then spam and
END_OF_DOCUMENT cleanup, never re-checked). The differences, rule by rule: docs/sources.md, "obelics".

Language identification and perplexity (the original used a fastText lid model and a KenLM model) need
models the toolkit does not ship: a recipe names the files (``lang_id: {model, language, min_score}``,
``perplexity: {model, max, tokenizer}``, see ``models.py`` and ``curation.text_models``), and Python users may
instead pass any callable ``(text) -> float`` as ``lang_id_scorer`` / ``perplexity_scorer`` (thresholds
``min_lang_id`` / ``max_perplexity``). All are ``None`` (off) by default.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from math import isfinite
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from curation.sources.obelics.document import (
    END_OF_DOCUMENT,
    PARAGRAPH_SEPARATOR,
    ObelicsDocument,
    strip_end_of_document,
)
from curation.sources.obelics.models import (
    WHEN_SET,
    LangIdFilter,
    PerplexityFilter,
    check_model_settings,
    lang_id_fails,
    perplexity_fails,
)

if TYPE_CHECKING:
    import pyarrow as pa
from curation.sources.obelics.signals import (
    PUNCTUATION,
    WordLists,
    char_repetition_ratio,
    original_special_characters_ratio,
    original_split_words,
    punctuation_tokens,
    repeated_ngram_ratio,
    special_characters_ratio,
    split_words,
    standardize_whitespace,
    vocabulary_ratio,
)

FilterMode = Literal["improved", "original"]

# --------------------------------------------------------------------------------------------------
# Configs


@runtime_checkable
class TextScorer(Protocol):
    """A model hook: takes a text, returns a score.

    - language id: the probability that the text is English (return 0.0 when the model's top label
      is another language; the original kept a text when the fastText top label was ``en`` with
      score >= 0.8);
    - perplexity: the perplexity of the text under a language model (the original: KenLM trained on
      Wikipedia, SentencePiece-tokenized, lower is better).

    A recipe turns the rules on with model files instead (``lang_id``, ``perplexity``: ``models.py``);
    both are off by default.
    """

    def __call__(self, text: str) -> float: ...


Scorer = SkipJsonSchema[Callable[[str], float] | None]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TextConfig(_Config):
    """The paragraph and document configs: each model rule is a model file or a Python hook, not both."""

    @model_validator(mode="after")
    def _one_way_per_model_rule(self) -> _TextConfig:
        check_model_settings(self)
        return self


_LANG_ID = "fastText language id (`models.LangIdFilter`): {model, language, min_score}; off by default"
_PERPLEXITY = "KenLM perplexity (`models.PerplexityFilter`): {model, max, tokenizer, normalization}; off by default"


class ParagraphFilterConfig(_TextConfig):
    """Paragraph-level rules (defaults: the original OBELICS thresholds). ``None`` disables a rule.

    The model rules (``lang_id``, ``perplexity``: model files, see ``models.py``; or, in Python, the hooks
    ``lang_id_scorer`` / ``perplexity_scorer``, see ``TextScorer``) are off (None) by default, as they were at
    paragraph level in the original; each scores the paragraph.
    """

    min_words: int | None = Field(default=4, ge=0)
    max_words: int | None = Field(default=1_000, ge=0)
    char_repetition_n: int = Field(default=10, ge=1)
    max_char_repetition: float | None = Field(default=0.1, ge=0.0)
    word_repetition_n: int = Field(default=5, ge=1)
    max_word_repetition: float | None = Field(default=0.1, ge=0.0)
    max_special_characters: float | None = Field(default=0.3, ge=0.0)
    min_stopwords: float | None = Field(default=0.3, ge=0.0)
    max_flagged_words: float | None = Field(default=0.01, ge=0.0)
    min_punctuation: float | None = Field(default=0.001, ge=0.0)
    punctuation_min_tokens: int | None = Field(
        default=12, ge=0, description="check punctuation only at >= this many tokens"
    )
    min_common_words: float | None = Field(default=0.8, ge=0.0)
    spam_words_drop_at: float | None = Field(default=0.12, ge=0.0, description="drop when spam-word ratio >= this")
    lang_id: LangIdFilter | None = Field(default=None, description=_LANG_ID, json_schema_extra=WHEN_SET)
    perplexity: PerplexityFilter | None = Field(default=None, description=_PERPLEXITY, json_schema_extra=WHEN_SET)
    lang_id_scorer: Scorer = Field(default=None, exclude=True)
    min_lang_id: float | None = Field(default=0.8, description="The threshold of the Python hook lang_id_scorer.")
    perplexity_scorer: Scorer = Field(default=None, exclude=True)
    max_perplexity: float | None = Field(
        default=1_500.0, description="The threshold of the Python hook perplexity_scorer."
    )


class DocumentFilterConfig(_TextConfig):
    """Document-level rules on the full text (non-empty texts joined with ``"\\n\\n"``), plus the
    image count and the "at least one text and one image" rule that ``clean_document`` enforces.
    Defaults: the original OBELICS thresholds. ``None`` disables a rule.

    The original used fastText language id (en, >= 0.8) and KenLM perplexity (<= 1500) here, on the full
    text; the toolkit ships no such model, so both are off (None) by default: a recipe names the model files
    (``lang_id``, ``perplexity``, see ``models.py``), Python users may pass hooks instead
    (``lang_id_scorer`` / ``perplexity_scorer``, see ``TextScorer``, thresholds ``min_lang_id`` /
    ``max_perplexity``).
    """

    min_words: int | None = Field(default=10, ge=0)
    max_words: int | None = Field(default=2_000, ge=0)
    char_repetition_n: int = Field(default=10, ge=1)
    max_char_repetition: float | None = Field(default=0.1, ge=0.0)
    word_repetition_n: int = Field(default=5, ge=1)
    max_word_repetition: float | None = Field(default=0.2, ge=0.0)
    max_special_characters: float | None = Field(default=0.275, ge=0.0)
    min_stopwords: float | None = Field(default=0.35, ge=0.0)
    max_flagged_words: float | None = Field(default=0.01, ge=0.0)
    min_punctuation: float | None = Field(default=0.03, ge=0.0)
    punctuation_min_tokens: int | None = Field(
        default=None, ge=0, description="check punctuation only at >= this many tokens"
    )
    min_common_words: float | None = Field(default=0.9, ge=0.0)
    lang_id: LangIdFilter | None = Field(default=None, description=_LANG_ID, json_schema_extra=WHEN_SET)
    perplexity: PerplexityFilter | None = Field(default=None, description=_PERPLEXITY, json_schema_extra=WHEN_SET)
    lang_id_scorer: Scorer = Field(default=None, exclude=True)
    min_lang_id: float | None = Field(default=0.8, description="The threshold of the Python hook lang_id_scorer.")
    perplexity_scorer: Scorer = Field(default=None, exclude=True)
    max_perplexity: float | None = Field(
        default=1_500.0, description="The threshold of the Python hook perplexity_scorer."
    )
    min_images: int | None = Field(default=1, ge=0)
    max_images: int | None = Field(default=30, ge=0)
    require_text_and_image: bool = True


class ImageFilterConfig(_Config):
    """Per-image rules on the metadata dict (defaults: the original OBELICS values). ``None``
    disables a rule. ``max_url_occurrences`` is the corpus-wide rule: it is not applied by
    ``check_image``; compute ``overused_urls(count_image_urls(files), cfg.max_url_occurrences)`` once
    and pass the set to ``clean_document``."""

    formats: frozenset[str] | None = frozenset({"jpg", "jpeg", "png", "webp"})
    min_side: int | None = Field(default=150, ge=0)
    max_side: int | None = Field(default=20_000, ge=0)
    max_aspect_ratio: float | None = Field(default=2.0, ge=1.0)
    max_url_occurrences: int | None = Field(default=10, ge=0)

    @field_validator("formats")
    @classmethod
    def _lowercase_formats(cls, v: frozenset[str] | None) -> frozenset[str] | None:
        return None if v is None else frozenset(f.strip().lower().lstrip(".") for f in v)

    @field_serializer("formats")
    def _sorted_formats(self, v: frozenset[str] | None) -> list[str] | None:
        """A set dumps in string-hash order, which changes per process: sorted, the recipe's identity is stable."""
        return None if v is None else sorted(v)


class ObelicsFilterConfig(_Config):
    """The three configs ``clean_document`` applies, and how (``mode``)."""

    paragraph: ParagraphFilterConfig = ParagraphFilterConfig()
    document: DocumentFilterConfig = DocumentFilterConfig()
    image: ImageFilterConfig = ImageFilterConfig()
    mode: FilterMode = Field(
        default="improved",
        description="improved: Unicode-aware words and special characters, spam and END_OF_DOCUMENT removal "
        "before the document rules, percentage sizes converted; original: the decisions and kept text of the "
        "original OBELICS code (docs/sources.md, obelics).",
        # curation.recipe.common.WHEN_SET (a new field: left out of a recipe's identity while at its default).
        # Spelled out: importing curation.recipe here would be circular (curation.recipe imports this module).
        json_schema_extra={"identity": "when_set"},
    )


# --------------------------------------------------------------------------------------------------
# Text checks


def _first_failure(
    text: str,
    cfg: ParagraphFilterConfig | DocumentFilterConfig,
    wl: WordLists,
    spam: float | None,
    mode: FilterMode = "improved",
) -> str | None:
    """The name of the first failing rule for ``text`` (without prefix), or None. Rules in the
    original's order, spam (a later OBELICS step) before the model hooks. ``mode="original"``: on the
    ``standardize_whitespace``-d text, with the original's words and special characters, and a text
    without any punctuation token fails the punctuation rule whatever ``punctuation_min_tokens``."""
    original = mode == "original"
    if original:
        text = standardize_whitespace(text)
    words = original_split_words(text) if original else split_words(text)
    n = len(words)
    if cfg.min_words is not None and n < cfg.min_words:
        return "too_few_words"
    if cfg.max_words is not None and n > cfg.max_words:
        return "too_many_words"
    max_char, max_word = cfg.max_char_repetition, cfg.max_word_repetition
    if max_char is not None and char_repetition_ratio(text, cfg.char_repetition_n) > max_char:
        return "char_repetition"
    if max_word is not None and repeated_ngram_ratio(words, cfg.word_repetition_n) > max_word:
        return "word_repetition"
    if cfg.max_special_characters is not None:
        special = original_special_characters_ratio(text) if original else special_characters_ratio(text)
        if special > cfg.max_special_characters:
            return "special_characters"
    if cfg.min_stopwords is not None and vocabulary_ratio(words, wl.stopwords) < cfg.min_stopwords:
        return "stopwords"
    if cfg.max_flagged_words is not None and vocabulary_ratio(words, wl.flagged_words) > cfg.max_flagged_words:
        return "flagged_words"
    if cfg.min_punctuation is not None:
        tokens = punctuation_tokens(text)
        few = cfg.punctuation_min_tokens is not None and len(tokens) < cfg.punctuation_min_tokens
        if not few or (original and not tokens):  # the original scored "no token" 0.0 before counting them
            ratio = sum(1 for t in tokens if t in PUNCTUATION) / len(tokens) if tokens else 0.0
            if ratio < cfg.min_punctuation:
                return "punctuation"
    if cfg.min_common_words is not None and vocabulary_ratio(words, wl.common_words) < cfg.min_common_words:
        return "common_words"
    if spam is not None and vocabulary_ratio(words, wl.spam_words) >= spam:
        return "spam"
    if lang_id_fails(cfg, text):  # a model (lang_id) or a Python hook (lang_id_scorer)
        return "lang_id"
    if perplexity_fails(cfg, text):
        return "perplexity"
    return None


def check_paragraph(
    paragraph: str,
    cfg: ParagraphFilterConfig | None = None,
    wordlists: WordLists | None = None,
    *,
    mode: FilterMode = "improved",
) -> str | None:
    """The first failing paragraph rule as a reason (``paragraph_too_few_words``,
    ``paragraph_too_many_words``, ``paragraph_char_repetition``, ``paragraph_word_repetition``,
    ``paragraph_special_characters``, ``paragraph_stopwords``, ``paragraph_flagged_words``,
    ``paragraph_punctuation``, ``paragraph_common_words``, ``paragraph_spam``, ``paragraph_lang_id``,
    ``paragraph_perplexity``), or None when it passes. ``mode="original"``: the original's definitions
    (``_first_failure``), and a paragraph that is exactly ``END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED`` passes
    unchecked, as there."""
    cfg = cfg or ParagraphFilterConfig()
    if mode == "original" and paragraph == END_OF_DOCUMENT:
        return None
    failed = _first_failure(paragraph, cfg, wordlists or WordLists.default(), cfg.spam_words_drop_at, mode)
    return None if failed is None else f"paragraph_{failed}"


def _filter_text(
    text: str, cfg: ParagraphFilterConfig, wl: WordLists, spam: float | None, mode: FilterMode
) -> tuple[list[str], Counter[str]]:
    """The kept paragraphs of ``text`` (in order) and the removed ones by reason. ``mode="original"``: on
    the ``standardize_whitespace``-d text, paragraphs that are exactly the END_OF_DOCUMENT token kept
    unchecked."""
    original = mode == "original"
    if original:
        text = standardize_whitespace(text)
    kept: list[str] = []
    removed: Counter[str] = Counter()
    for paragraph in text.split(PARAGRAPH_SEPARATOR):
        failed = None if original and paragraph == END_OF_DOCUMENT else _first_failure(paragraph, cfg, wl, spam, mode)
        if failed is None:
            kept.append(paragraph)
        else:
            removed[f"paragraph_{failed}"] += 1
    return kept, removed


def filter_paragraphs(
    text: str,
    cfg: ParagraphFilterConfig | None = None,
    wordlists: WordLists | None = None,
    *,
    mode: FilterMode = "improved",
) -> tuple[str, Counter[str]]:
    """Split ``text`` on ``"\\n\\n"``, keep the paragraphs passing ``check_paragraph`` (in order,
    unchanged), and return them joined with ``"\\n\\n"`` (``""`` when none passes) together with a
    Counter of the removed paragraphs by reason. Empty paragraphs (from runs of blank lines) count
    as ``paragraph_too_few_words`` like any other paragraph, as in the original. ``mode="original"``:
    the kept paragraphs are the ``standardize_whitespace``-d ones, as the original kept them."""
    cfg = cfg or ParagraphFilterConfig()
    kept, removed = _filter_text(text, cfg, wordlists or WordLists.default(), cfg.spam_words_drop_at, mode)
    return PARAGRAPH_SEPARATOR.join(kept), removed


def check_document(
    doc: ObelicsDocument,
    cfg: DocumentFilterConfig | None = None,
    wordlists: WordLists | None = None,
    *,
    mode: FilterMode = "improved",
) -> str | None:
    """The document-level text rules on ``doc.full_text()``: the first failing one as a reason
    (``doc_too_few_words``, ``doc_too_many_words``, ``doc_char_repetition``, ``doc_word_repetition``,
    ``doc_special_characters``, ``doc_stopwords``, ``doc_flagged_words``, ``doc_punctuation``,
    ``doc_common_words``, ``doc_lang_id``, ``doc_perplexity``), or None when all pass. Image counts
    are checked by ``clean_document``. ``mode="original"``: the original's definitions (``_first_failure``)."""
    cfg = cfg or DocumentFilterConfig()
    failed = _first_failure(doc.full_text(), cfg, wordlists or WordLists.default(), None, mode)
    return None if failed is None else f"doc_{failed}"


# The reasons a document is dropped (``clean_document``, then ``check_document``; reason -> meaning). Settings are
# those of ``filters.document`` (``DocumentFilterConfig``); spam is a paragraph rule only.
DOCUMENT_DROP_REASONS = {
    "doc_too_few_images": "fewer images than `min_images` left after the image rules",
    "doc_too_many_images": "more images than `max_images` left after the image rules",
    "doc_no_text": (
        "no text left after the paragraph rules (`require_text_and_image`); with `mode: original` also after the "
        "spam rule, or only END_OF_DOCUMENT tokens left"
    ),
    "doc_no_image": "no image left after the image rules (`require_text_and_image`)",
    "doc_too_few_words": "the document's text has fewer words than `min_words`",
    "doc_too_many_words": "the document's text has more words than `max_words`",
    "doc_char_repetition": "the ratio of repeated character n-grams is above `max_char_repetition`",
    "doc_word_repetition": "the ratio of repeated word n-grams is above `max_word_repetition`",
    "doc_special_characters": "the ratio of special characters is above `max_special_characters`",
    "doc_stopwords": "the ratio of stopwords is below `min_stopwords`",
    "doc_flagged_words": "the ratio of flagged words is above `max_flagged_words`",
    "doc_punctuation": "the ratio of punctuation tokens is below `min_punctuation`",
    "doc_common_words": "the ratio of common words is below `min_common_words`",
    "doc_lang_id": (
        "the fastText language-id model's top label is not `lang_id.language`, or its probability is below "
        "`lang_id.min_score` (only with `lang_id`; in Python also `lang_id_scorer` below `min_lang_id`)"
    ),
    "doc_perplexity": (
        "the KenLM perplexity of the normalised text is above `perplexity.max` (only with `perplexity`; in Python "
        "also `perplexity_scorer` above `max_perplexity`)"
    ),
}


# --------------------------------------------------------------------------------------------------
# Images

_PIXELS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:px)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if isfinite(value) else None
    if isinstance(value, str) and (m := _PIXELS.match(value)):
        return float(m.group(1))
    return None


def image_sizes(meta: Mapping) -> dict[str, float]:
    """The usable sizes of an image's metadata: ``original_width``, ``original_height``,
    ``rendered_width``, ``rendered_height`` when present as numbers (ints, floats, or strings like
    ``"300"`` / ``"300px"``). A rendered size given as a percentage (``"50%"``, ``"33.3%"``) is converted
    from the original size of the same side; anything else (``"auto"``, null, a percentage without an
    original size) counts as absent. (The original converted whole percentages only: for ``"33.3%"``
    it deleted the rendered size, see ``original_image_sizes``.)"""
    sizes: dict[str, float] = {}
    for side in ("width", "height"):
        original = _number(meta.get(f"original_{side}"))
        if original is not None:
            sizes[f"original_{side}"] = original
    for side in ("width", "height"):
        raw = meta.get(f"rendered_{side}")
        rendered = _number(raw)
        if rendered is None and isinstance(raw, str) and (m := _PERCENT.match(raw)):
            original = sizes.get(f"original_{side}")
            if original is not None:
                rendered = float(round(original * float(m.group(1)) / 100))
        if rendered is not None:
            sizes[f"rendered_{side}"] = rendered
    return sizes


def _original_number(value: object) -> float | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # kept an int: the original's percentage arithmetic was on ints
    return _number(value)


def _whole_percentage(raw: str) -> int | None:
    """``int()`` of the value with every ``%`` removed, as the original parsed a percentage (so ``" 50 %"``,
    ``"+50%"`` and ``"5_0%"`` are 50); None where ``int()`` fails (``"33.3%"``, ``"%"``, ``"50px%"``)."""
    try:
        return int(raw.replace("%", ""))
    except ValueError:
        return None


def original_image_sizes(meta: Mapping) -> dict[str, float]:
    """``image_sizes`` as the original read them: a rendered size that is a string holding ``%`` is
    ``round(original * p / 100)`` where ``p`` is a whole number (``_whole_percentage``); when it is not (a
    decimal percentage such as ``"33.3%"``), or the original size is unknown, the rendered size is absent
    (the original deleted it). Other values as in ``image_sizes`` (the original only ever saw numbers
    there: its original size came from the downloaded image)."""
    sizes: dict[str, float] = {}
    for side in ("width", "height"):
        original = _original_number(meta.get(f"original_{side}"))
        if original is not None:
            sizes[f"original_{side}"] = original
        raw = meta.get(f"rendered_{side}")
        if isinstance(raw, str) and "%" in raw:
            percent = _whole_percentage(raw)
            rendered = None if percent is None or original is None else round(original * percent / 100)
        else:
            rendered = _original_number(raw)
        if rendered is not None:
            sizes[f"rendered_{side}"] = rendered
    return sizes


def _check_image_original(meta: Mapping, cfg: ImageFilterConfig) -> str | None:
    if cfg.formats is not None and "format" in meta:
        fmt = meta["format"]  # compared as it is: null, "" or "JPEG" fail
        if not isinstance(fmt, str) or fmt not in cfg.formats:
            return "image_format"
    sizes = original_image_sizes(meta)
    if cfg.min_side is not None and any(v < cfg.min_side for v in sizes.values()):
        return "image_too_small"
    if cfg.max_side is not None and any(v > cfg.max_side for v in sizes.values()):
        return "image_too_large"
    w, h = sizes.get("original_width"), sizes.get("original_height")
    if cfg.max_aspect_ratio is None or w is None or h is None:
        return None
    return None if h and 1 / cfg.max_aspect_ratio <= w / h <= cfg.max_aspect_ratio else "image_aspect_ratio"


def check_image(meta: Mapping, cfg: ImageFilterConfig | None = None, *, mode: FilterMode = "improved") -> str | None:
    """The first failing image rule, or None:

    - ``image_format``: ``meta["format"]`` (lowercased, leading dot removed) is not one of
      ``cfg.formats``; an image without a format (missing, null or ``""``) passes (set ``format`` from
      the downloaded bytes to enforce it). The original dropped a null or empty format, and compared
      the value as it is (``mode="original"``); both keep an image without the key;
    - ``image_too_small`` / ``image_too_large``: a side below ``min_side`` / above ``max_side``
      pixels, checked on the original size and on the rendered size, each side when present (see
      ``image_sizes``); too small is checked on all four before too large;
    - ``image_aspect_ratio``: ``max(w, h) / min(w, h) > max_aspect_ratio`` on the original size, or on
      the rendered size when the original is not known (a zero side fails).

    ``mode="original"``: the sizes of ``original_image_sizes`` and the aspect ratio
    ``1 / max_aspect_ratio <= w / h <= max_aspect_ratio`` on the original size only.
    """
    cfg = cfg or ImageFilterConfig()
    if mode == "original":
        return _check_image_original(meta, cfg)
    if cfg.formats is not None:
        fmt = meta.get("format")
        if fmt not in (None, "") and str(fmt).strip().lower().lstrip(".") not in cfg.formats:
            return "image_format"
    sizes = image_sizes(meta)
    if cfg.min_side is not None and any(v < cfg.min_side for v in sizes.values()):
        return "image_too_small"
    if cfg.max_side is not None and any(v > cfg.max_side for v in sizes.values()):
        return "image_too_large"
    if cfg.max_aspect_ratio is not None:
        for kind in ("original", "rendered"):
            w, h = sizes.get(f"{kind}_width"), sizes.get(f"{kind}_height")
            if w is not None and h is not None:
                if min(w, h) <= 0 or max(w, h) / min(w, h) > cfg.max_aspect_ratio:
                    return "image_aspect_ratio"
                break
    return None


def overused_urls(url_counts: Mapping[str, int] | pa.Table, max_count: int | None = 10) -> set[str]:
    """The URLs seen more than ``max_count`` times (``n > max_count``) in ``url_counts`` (a mapping
    url -> count, or the table ``count_image_urls`` returns); empty when ``max_count`` is None."""
    if max_count is None:
        return set()
    if not isinstance(url_counts, Mapping):
        url_counts = dict(zip(url_counts.column("url").to_pylist(), url_counts.column("n").to_pylist(), strict=True))
    return {url for url, n in url_counts.items() if n > max_count}


def count_image_urls(
    parquet_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    min_count: int = 1,
    memory_limit: str | None = None,
    temp_directory: str | os.PathLike[str] | None = None,
    threads: int | None = None,
) -> pa.Table:
    """Count image URLs across OBELICS parquet files with DuckDB, out of core.

    Reads only the ``images`` column (list<string>), unnests it, skips nulls (text positions) and
    counts every occurrence (a URL twice in one document counts twice, as in the original). Returns
    a ``pyarrow.Table`` with columns ``url`` (string) and ``n`` (int64), only URLs with
    ``n >= min_count``, ordered by ``n`` descending then ``url``. Over the full corpus (~350M image
    positions) pass ``min_count=max_url_occurrences + 1`` so that only the overused URLs are
    materialized; DuckDB spills the aggregation to ``temp_directory`` when it exceeds
    ``memory_limit`` (e.g. ``"8GB"``). Paths may be DuckDB glob patterns.
    """
    import duckdb

    if isinstance(parquet_paths, str | os.PathLike):
        parquet_paths = [parquet_paths]
    paths = [os.fspath(p) for p in parquet_paths]
    if not paths:
        raise ValueError("count_image_urls: no parquet files given")
    config: dict[str, str | bool | int | float | list[str]] = {}  # what duckdb.connect(config=) takes
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if temp_directory is not None:
        config["temp_directory"] = os.fspath(temp_directory)
    if threads is not None:
        config["threads"] = threads
    query = """
        SELECT url, count(*)::BIGINT AS n
        FROM (SELECT unnest(images) AS url FROM read_parquet(?))
        WHERE url IS NOT NULL
        GROUP BY url
        HAVING count(*) >= ?
        ORDER BY n DESC, url
    """
    con = duckdb.connect(config=config)
    try:
        rel = con.sql(query, params=[paths, int(min_count)])
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    finally:
        con.close()
    import pyarrow as pa

    return table.cast(pa.schema([("url", pa.string()), ("n", pa.int64())]))


# --------------------------------------------------------------------------------------------------
# Whole documents


def _merge_adjacent_texts(
    texts: list[str | None], images: list[str | None], metadata: list[dict | None]
) -> tuple[list[str | None], list[str | None], list[dict | None]]:
    out_t: list[str | None] = []
    out_i: list[str | None] = []
    out_m: list[dict | None] = []
    for text, image, meta in zip(texts, images, metadata, strict=True):
        if text is not None and out_t and out_t[-1] is not None:
            out_t[-1] = out_t[-1] + PARAGRAPH_SEPARATOR + text
            continue
        out_t.append(text)
        out_i.append(image)
        out_m.append(meta)
    return out_t, out_i, out_m


def clean_document(
    doc: ObelicsDocument,
    cfgs: ObelicsFilterConfig | None = None,
    overused: AbstractSet[str] = frozenset(),
    wordlists: WordLists | None = None,
) -> tuple[ObelicsDocument | None, str | None, Counter[str]]:
    """Apply every OBELICS rule to one document; ``doc`` itself is not modified.

    1. Remove ``END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED`` (``strip_end_of_document``; counted as
       ``end_of_document_token``).
    2. ``filter_paragraphs`` on each text; a text left empty (or whitespace-only) is removed.
    3. Remove each image failing ``check_image``, then each image whose URL is in ``overused``
       (``image_overused_url``).
    4. Merge texts made adjacent by removed images with ``"\\n\\n"`` (keeps the OBELICS layout).
    5. Drop the document for ``doc_too_few_images`` / ``doc_too_many_images`` (``min_images`` /
       ``max_images``), then ``doc_no_text`` / ``doc_no_image`` (``require_text_and_image``), then the
       first failing ``check_document`` rule.

    Returns ``(cleaned document, None, removed)`` or ``(None, reason, removed)``, where ``removed``
    counts removed paragraphs and images (and tokens) by reason, also for dropped documents.

    ``cfgs.mode == "original"``: the original's steps instead, ``original_first_pass`` then
    ``original_second_pass`` (``overused`` must then be counted over the first pass's survivors).
    """
    cfgs = cfgs or ObelicsFilterConfig()
    wl = wordlists or WordLists.default()
    if cfgs.mode == "original":
        first, reason, removed = original_first_pass(doc, cfgs, wl)
        if first is None:
            return None, reason, removed
        second, reason, more = original_second_pass(first, cfgs, overused, wl)
        return second, reason, removed + more
    removed: Counter[str] = Counter()
    doc, n_tokens = strip_end_of_document(doc)
    if n_tokens:
        removed["end_of_document_token"] += n_tokens

    texts: list[str | None] = []
    images: list[str | None] = []
    metadata: list[dict | None] = []
    for text, image, meta in zip(doc.texts, doc.images, doc.metadata, strict=True):
        if text is not None:
            cleaned, dropped = filter_paragraphs(text, cfgs.paragraph, wl)
            removed.update(dropped)
            if not cleaned.strip():
                continue
            texts.append(cleaned)
            images.append(None)
            metadata.append(None)
        else:
            assert image is not None and meta is not None  # ObelicsDocument validated this
            reason = check_image(meta, cfgs.image)
            if reason is None and image in overused:
                reason = "image_overused_url"
            if reason is not None:
                removed[reason] += 1
                continue
            texts.append(None)
            images.append(image)
            metadata.append(meta)
    texts, images, metadata = _merge_adjacent_texts(texts, images, metadata)
    cleaned_doc = ObelicsDocument(texts, images, metadata, doc.general_metadata)

    dcfg = cfgs.document
    n_images = cleaned_doc.n_images
    if dcfg.min_images is not None and n_images < dcfg.min_images:
        return None, "doc_too_few_images", removed
    if dcfg.max_images is not None and n_images > dcfg.max_images:
        return None, "doc_too_many_images", removed
    if dcfg.require_text_and_image:
        if cleaned_doc.n_texts == 0:
            return None, "doc_no_text", removed
        if n_images == 0:
            return None, "doc_no_image", removed
    reason = check_document(cleaned_doc, dcfg, wl)
    if reason is not None:
        return None, reason, removed
    return cleaned_doc, None, removed


# --------------------------------------------------------------------------------------------------
# The original's steps (mode: original)

_Entry = tuple[str | None, str | None, dict | None]  # (text, image URL, metadata) at one position


def _as_entries(doc: ObelicsDocument) -> list[_Entry]:
    return list(zip(doc.texts, doc.images, doc.metadata, strict=True))


def _from_entries(entries: list[_Entry], general_metadata: dict) -> ObelicsDocument:
    return ObelicsDocument(
        [t for t, _, _ in entries], [i for _, i, _ in entries], [m for _, _, m in entries], general_metadata
    )


def _tidy(entries: list[_Entry]) -> list[_Entry]:
    """The original's final cleaning: texts that are exactly ``""`` go, consecutive texts are joined
    with ``"\\n\\n"``."""
    out: list[_Entry] = []
    for text, image, meta in entries:
        if text is not None:
            if text == "":
                continue
            if out and out[-1][0] is not None:
                out[-1] = (out[-1][0] + PARAGRAPH_SEPARATOR + text, None, None)
                continue
        out.append((text, image, meta))
    return out


def _is_end_of_document(paragraph: str) -> bool:
    return paragraph.strip() == END_OF_DOCUMENT


def original_first_pass(
    doc: ObelicsDocument, cfgs: ObelicsFilterConfig | None = None, wordlists: WordLists | None = None
) -> tuple[ObelicsDocument | None, str | None, Counter[str]]:
    """The first pass of the original (its node- and document-level filtering), whatever ``cfgs.mode``:

    1. every text is ``standardize_whitespace``-d and split into paragraphs; a paragraph that is exactly
       ``END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED`` is kept unchecked, the others must pass the paragraph
       rules (``mode="original"``, without the spam rule, which came later); a text left without a
       paragraph is removed, and texts are *not* merged yet;
    2. each image must pass ``check_image(mode="original")``;
    3. the document is dropped for ``doc_too_few_images`` / ``doc_too_many_images``, then for the first
       failing document rule on the joined texts, END_OF_DOCUMENT tokens included.

    Returns ``(document, None, removed)`` or ``(None, reason, removed)``. The original counted image
    URLs (``max_url_occurrences``) over the surviving documents of this pass.
    """
    cfgs = cfgs or ObelicsFilterConfig(mode="original")
    wl = wordlists or WordLists.default()
    removed: Counter[str] = Counter()
    entries: list[_Entry] = []
    for text, image, meta in _as_entries(doc):
        if text is not None:
            kept, dropped = _filter_text(text, cfgs.paragraph, wl, None, "original")
            removed.update(dropped)
            if kept:
                entries.append((PARAGRAPH_SEPARATOR.join(kept), None, None))
            continue
        assert image is not None and meta is not None  # ObelicsDocument validated this
        reason = check_image(meta, cfgs.image, mode="original")
        if reason is not None:
            removed[reason] += 1
            continue
        entries.append((None, image, meta))
    first = _from_entries(entries, doc.general_metadata)
    dcfg = cfgs.document
    if dcfg.min_images is not None and first.n_images < dcfg.min_images:
        return None, "doc_too_few_images", removed
    if dcfg.max_images is not None and first.n_images > dcfg.max_images:
        return None, "doc_too_many_images", removed
    reason = check_document(first, dcfg, wl, mode="original")
    if reason is not None:
        return None, reason, removed
    return first, None, removed


def original_second_pass(
    doc: ObelicsDocument,
    cfgs: ObelicsFilterConfig | None = None,
    overused: AbstractSet[str] = frozenset(),
    wordlists: WordLists | None = None,
) -> tuple[ObelicsDocument | None, str | None, Counter[str]]:
    """The original's later steps on a survivor of ``original_first_pass``; nothing re-checks the
    document rules or the image count:

    1. images whose URL is in ``overused`` go (``image_overused_url``); empty texts go, consecutive texts
       are merged with ``"\\n\\n"``; no text or no image left: ``doc_no_text`` / ``doc_no_image``
       (``require_text_and_image``);
    2. an image whose URL already appeared in the document goes (``image_repeated_url``, the first is kept);
    3. paragraphs with a spam-word ratio ``>= spam_words_drop_at`` go (``paragraph_spam``); texts tidied again;
    4. in a run of paragraphs that are the END_OF_DOCUMENT token (``strip()``-ped), all but the first go;
       the last paragraph of the document goes when it is exactly the token (each counted as
       ``end_of_document_token``); the other tokens stay in the text, as in the released OBELICS;
    5. a document whose texts are all the token is dropped (``doc_no_text``), then ``doc_no_text`` /
       ``doc_no_image`` again (``require_text_and_image``).
    """
    cfgs = cfgs or ObelicsFilterConfig(mode="original")
    wl = wordlists or WordLists.default()
    removed: Counter[str] = Counter()
    require = cfgs.document.require_text_and_image

    def missing(entries: list[_Entry]) -> str | None:
        if not require:
            return None
        if not any(t for t, _, _ in entries):
            return "doc_no_text"
        if not any(i is not None for _, i, _ in entries):
            return "doc_no_image"
        return None

    entries: list[_Entry] = []
    for entry in _as_entries(doc):
        if entry[1] is not None and entry[1] in overused:
            removed["image_overused_url"] += 1
        else:
            entries.append(entry)
    entries = _tidy(entries)
    if reason := missing(entries):
        return None, reason, removed

    seen: set[str] = set()
    spam = cfgs.paragraph.spam_words_drop_at
    cleaned: list[_Entry] = []
    for text, image, meta in entries:
        if image is not None:
            if image in seen:
                removed["image_repeated_url"] += 1
                continue
            seen.add(image)
        elif text is not None and spam is not None:
            paragraphs = text.split(PARAGRAPH_SEPARATOR)
            kept = [p for p in paragraphs if vocabulary_ratio(original_split_words(p), wl.spam_words) < spam]
            if len(kept) < len(paragraphs):
                removed["paragraph_spam"] += len(paragraphs) - len(kept)
            text = PARAGRAPH_SEPARATOR.join(kept)
        cleaned.append((text, image, meta))
    entries = _tidy(cleaned)

    for k, (text, image, meta) in enumerate(entries):
        if text is None:
            continue
        paragraphs = text.split(PARAGRAPH_SEPARATOR)
        repeats = {j for j in range(1, len(paragraphs)) if _is_end_of_document(paragraphs[j - 1])}
        kept = [p for j, p in enumerate(paragraphs) if not (j in repeats and _is_end_of_document(p))]
        if k == len(entries) - 1 and kept[-1] == END_OF_DOCUMENT:
            kept.pop()
        if len(kept) < len(paragraphs):
            removed["end_of_document_token"] += len(paragraphs) - len(kept)
            entries[k] = (PARAGRAPH_SEPARATOR.join(kept), image, meta)
    entries = _tidy(entries)

    if all(_is_end_of_document(t) for t, _, _ in entries if t):
        return None, "doc_no_text", removed
    if reason := missing(entries):
        return None, reason, removed
    return _from_entries(entries, doc.general_metadata), None, removed
