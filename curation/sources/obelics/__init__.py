"""OBELICS (interleaved web documents): parsing rows of the released parquet files and the original
OBELICS quality filters (paragraph, document and image level) as pure functions. A pipeline calls
``ObelicsDocument.from_row`` then ``clean_document``; the corpus-wide image-URL rule needs
``count_image_urls`` + ``overused_urls`` first. Thresholds: docs/sources.md, "obelics"."""

from curation.sources.obelics.document import (
    END_OF_DOCUMENT,
    ObelicsDocument,
    strip_end_of_document,
    strip_end_of_document_text,
)
from curation.sources.obelics.filters import (
    DocumentFilterConfig,
    ImageFilterConfig,
    ObelicsFilterConfig,
    ParagraphFilterConfig,
    TextScorer,
    check_document,
    check_image,
    check_paragraph,
    clean_document,
    count_image_urls,
    filter_paragraphs,
    overused_urls,
)
from curation.sources.obelics.signals import (
    WordLists,
    char_repetition_ratio,
    common_words_ratio,
    flagged_words_ratio,
    load_wordlist,
    punctuation_ratio,
    spam_words_ratio,
    special_characters_ratio,
    split_words,
    stopwords_ratio,
    text_signals,
    word_count,
    word_repetition_ratio,
)

__all__ = [
    "END_OF_DOCUMENT",
    "DocumentFilterConfig",
    "ImageFilterConfig",
    "ObelicsDocument",
    "ObelicsFilterConfig",
    "ParagraphFilterConfig",
    "TextScorer",
    "WordLists",
    "char_repetition_ratio",
    "check_document",
    "check_image",
    "check_paragraph",
    "clean_document",
    "common_words_ratio",
    "count_image_urls",
    "filter_paragraphs",
    "flagged_words_ratio",
    "load_wordlist",
    "overused_urls",
    "punctuation_ratio",
    "spam_words_ratio",
    "special_characters_ratio",
    "split_words",
    "stopwords_ratio",
    "strip_end_of_document",
    "strip_end_of_document_text",
    "text_signals",
    "word_count",
    "word_repetition_ratio",
]
