"""Quality filters for OBELICS web documents: the original OBELICS paragraph-, document- and
image-level rules (the paper's thresholds; docs/sources.md, "obelics"), as pure functions over the text
signals of ``signals.py``.

Thresholds are inclusive: ``max_*`` passes at equality, ``min_*`` passes at equality. The spam rule
drops a paragraph at ``ratio >= spam_words_drop_at`` (as the original kept ``ratio < 0.12``).

Language identification and perplexity (the original used a fastText lid model and a KenLM model)
need models the toolkit does not ship, so they are **hooks**: pass any callable
``(text) -> float`` as ``lang_id_scorer`` / ``perplexity_scorer`` in the configs. Both are ``None``
(off) by default; with no scorer the threshold is ignored.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from math import isfinite
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator
from pydantic.json_schema import SkipJsonSchema

from curation.sources.obelics.document import PARAGRAPH_SEPARATOR, ObelicsDocument, strip_end_of_document

if TYPE_CHECKING:
    import pyarrow as pa
from curation.sources.obelics.signals import (
    PUNCTUATION,
    WordLists,
    char_repetition_ratio,
    punctuation_tokens,
    repeated_ngram_ratio,
    special_characters_ratio,
    split_words,
    vocabulary_ratio,
)

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

    The toolkit ships no such model, so both hooks are off by default.
    """

    def __call__(self, text: str) -> float: ...


Scorer = SkipJsonSchema[Callable[[str], float] | None]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParagraphFilterConfig(_Config):
    """Paragraph-level rules (defaults: the original OBELICS thresholds). ``None`` disables a rule.

    ``lang_id_scorer`` / ``perplexity_scorer`` are model hooks (see ``TextScorer``), off (None) by
    default and off at paragraph level in the original (the toolkit ships no such model).
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
    lang_id_scorer: Scorer = Field(default=None, exclude=True)
    min_lang_id: float | None = 0.8
    perplexity_scorer: Scorer = Field(default=None, exclude=True)
    max_perplexity: float | None = 1_500.0


class DocumentFilterConfig(_Config):
    """Document-level rules on the full text (non-empty texts joined with ``"\\n\\n"``), plus the
    image count and the "at least one text and one image" rule that ``clean_document`` enforces.
    Defaults: the original OBELICS thresholds. ``None`` disables a rule.

    The original used fastText language id (en, >= 0.8) and KenLM perplexity (<= 1500) here; the
    toolkit ships no such model, so ``lang_id_scorer`` / ``perplexity_scorer`` are hooks (see
    ``TextScorer``), None (off) by default, and the thresholds apply only when a scorer is given.
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
    lang_id_scorer: Scorer = Field(default=None, exclude=True)
    min_lang_id: float | None = 0.8
    perplexity_scorer: Scorer = Field(default=None, exclude=True)
    max_perplexity: float | None = 1_500.0
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
    """The three configs ``clean_document`` applies."""

    paragraph: ParagraphFilterConfig = ParagraphFilterConfig()
    document: DocumentFilterConfig = DocumentFilterConfig()
    image: ImageFilterConfig = ImageFilterConfig()


# --------------------------------------------------------------------------------------------------
# Text checks


def _first_failure(
    text: str, cfg: ParagraphFilterConfig | DocumentFilterConfig, wl: WordLists, spam: float | None
) -> str | None:
    """The name of the first failing rule for ``text`` (without prefix), or None. Rules in the
    original's order, spam (a later OBELICS step) before the model hooks."""
    words = split_words(text)
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
    if cfg.max_special_characters is not None and special_characters_ratio(text) > cfg.max_special_characters:
        return "special_characters"
    if cfg.min_stopwords is not None and vocabulary_ratio(words, wl.stopwords) < cfg.min_stopwords:
        return "stopwords"
    if cfg.max_flagged_words is not None and vocabulary_ratio(words, wl.flagged_words) > cfg.max_flagged_words:
        return "flagged_words"
    if cfg.min_punctuation is not None:
        tokens = punctuation_tokens(text)
        if cfg.punctuation_min_tokens is None or len(tokens) >= cfg.punctuation_min_tokens:
            ratio = sum(1 for t in tokens if t in PUNCTUATION) / len(tokens) if tokens else 0.0
            if ratio < cfg.min_punctuation:
                return "punctuation"
    if cfg.min_common_words is not None and vocabulary_ratio(words, wl.common_words) < cfg.min_common_words:
        return "common_words"
    if spam is not None and vocabulary_ratio(words, wl.spam_words) >= spam:
        return "spam"
    if cfg.lang_id_scorer is not None and cfg.min_lang_id is not None and cfg.lang_id_scorer(text) < cfg.min_lang_id:
        return "lang_id"
    if (
        cfg.perplexity_scorer is not None
        and cfg.max_perplexity is not None
        and cfg.perplexity_scorer(text) > cfg.max_perplexity
    ):
        return "perplexity"
    return None


def check_paragraph(
    paragraph: str, cfg: ParagraphFilterConfig | None = None, wordlists: WordLists | None = None
) -> str | None:
    """The first failing paragraph rule as a reason (``paragraph_too_few_words``,
    ``paragraph_too_many_words``, ``paragraph_char_repetition``, ``paragraph_word_repetition``,
    ``paragraph_special_characters``, ``paragraph_stopwords``, ``paragraph_flagged_words``,
    ``paragraph_punctuation``, ``paragraph_common_words``, ``paragraph_spam``, ``paragraph_lang_id``,
    ``paragraph_perplexity``), or None when it passes."""
    cfg = cfg or ParagraphFilterConfig()
    failed = _first_failure(paragraph, cfg, wordlists or WordLists.default(), cfg.spam_words_drop_at)
    return None if failed is None else f"paragraph_{failed}"


def filter_paragraphs(
    text: str, cfg: ParagraphFilterConfig | None = None, wordlists: WordLists | None = None
) -> tuple[str, Counter[str]]:
    """Split ``text`` on ``"\\n\\n"``, keep the paragraphs passing ``check_paragraph`` (in order,
    unchanged), and return them joined with ``"\\n\\n"`` (``""`` when none passes) together with a
    Counter of the removed paragraphs by reason. Empty paragraphs (from runs of blank lines) count
    as ``paragraph_too_few_words`` like any other paragraph, as in the original."""
    cfg = cfg or ParagraphFilterConfig()
    wl = wordlists or WordLists.default()
    kept: list[str] = []
    removed: Counter[str] = Counter()
    for paragraph in text.split(PARAGRAPH_SEPARATOR):
        failed = _first_failure(paragraph, cfg, wl, cfg.spam_words_drop_at)
        if failed is None:
            kept.append(paragraph)
        else:
            removed[f"paragraph_{failed}"] += 1
    return PARAGRAPH_SEPARATOR.join(kept), removed


def check_document(
    doc: ObelicsDocument, cfg: DocumentFilterConfig | None = None, wordlists: WordLists | None = None
) -> str | None:
    """The document-level text rules on ``doc.full_text()``: the first failing one as a reason
    (``doc_too_few_words``, ``doc_too_many_words``, ``doc_char_repetition``, ``doc_word_repetition``,
    ``doc_special_characters``, ``doc_stopwords``, ``doc_flagged_words``, ``doc_punctuation``,
    ``doc_common_words``, ``doc_lang_id``, ``doc_perplexity``), or None when all pass. Image counts
    are checked by ``clean_document``."""
    cfg = cfg or DocumentFilterConfig()
    failed = _first_failure(doc.full_text(), cfg, wordlists or WordLists.default(), None)
    return None if failed is None else f"doc_{failed}"


# The reasons a document is dropped (``clean_document``, then ``check_document``; reason -> meaning). Settings are
# those of ``filters.document`` (``DocumentFilterConfig``); spam is a paragraph rule only.
DOCUMENT_DROP_REASONS = {
    "doc_too_few_images": "fewer images than `min_images` left after the image rules",
    "doc_too_many_images": "more images than `max_images` left after the image rules",
    "doc_no_text": "no text left after the paragraph rules (`require_text_and_image`)",
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
    "doc_lang_id": "the language-id score is below `min_lang_id` (only with a `lang_id_scorer`)",
    "doc_perplexity": "the perplexity is above `max_perplexity` (only with a `perplexity_scorer`)",
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
    ``"300"`` / ``"300px"``). A rendered size given as a percentage (``"50%"``) is converted from the
    original size of the same side, as the original pipeline did; anything else (``"auto"``, null, a
    percentage without an original size) counts as absent."""
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


def check_image(meta: Mapping, cfg: ImageFilterConfig | None = None) -> str | None:
    """The first failing image rule, or None:

    - ``image_format``: ``meta["format"]`` (lowercased, leading dot removed) is not one of
      ``cfg.formats``; an image without a format (missing, null or ``""``) passes (as in the
      original: set ``format`` from the downloaded bytes to enforce it);
    - ``image_too_small`` / ``image_too_large``: a side below ``min_side`` / above ``max_side``
      pixels, checked on the original size and on the rendered size, each side when present (see
      ``image_sizes``); too small is checked on all four before too large;
    - ``image_aspect_ratio``: ``max(w, h) / min(w, h) > max_aspect_ratio`` on the original size, or on
      the rendered size when the original is not known (a zero side fails).
    """
    cfg = cfg or ImageFilterConfig()
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
    """
    cfgs = cfgs or ObelicsFilterConfig()
    wl = wordlists or WordLists.default()
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
