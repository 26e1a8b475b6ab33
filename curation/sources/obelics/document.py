"""One OBELICS web document, parsed from a row of the released parquet files, and its
``END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED`` cleanup.

The parquet layout (docs/sources.md, "obelics"): ``images`` list<string|null> (image URLs), ``texts``
list<string|null>, ``metadata`` a JSON string holding a list of the same length (null at text
positions, an object at image positions), ``general_metadata`` a JSON string holding an object
(``url``, ``warc_filename``, ``warc_record_offset``, ``warc_record_length``). At every index exactly
one of ``texts[i]`` / ``images[i]`` is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.sources.jsontext import JsonRecordError, loads, loads_bytes

END_OF_DOCUMENT = "END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"
PARAGRAPH_SEPARATOR = "\n\n"

_COLUMNS = ("texts", "images", "metadata", "general_metadata")


@dataclass(frozen=True)
class ObelicsDocument:
    """An interleaved document: position ``i`` is a text (``texts[i]`` set, ``images[i]`` and
    ``metadata[i]`` None) or an image (``images[i]`` its URL, ``metadata[i]`` its metadata dict,
    ``texts[i]`` None). Construction validates this; a violation raises ``ValueError`` naming the
    index and what is wrong."""

    texts: list[str | None]
    images: list[str | None]
    metadata: list[dict | None]
    general_metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self.texts, self.images, self.metadata, self.general_metadata)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ObelicsDocument:
        """Parse one row of an OBELICS parquet file (e.g. from ``pyarrow.Table.to_pylist()``).

        ``metadata`` and ``general_metadata`` are JSON strings in the real files (already-decoded
        list / dict values are accepted too). Raises ``ValueError`` with a precise message for a
        missing column, a wrong type, invalid JSON, lists of different lengths, or an index where
        not exactly one of text / image is set.
        """
        try:
            missing = [c for c in _COLUMNS if c not in row]
        except TypeError as e:
            raise ValueError(f"OBELICS row must be a mapping, got {type(row).__name__}") from e
        if missing:
            raise ValueError(f"OBELICS row is missing column(s) {', '.join(map(repr, missing))}")
        texts = _as_list(row["texts"], "texts")
        images = _as_list(row["images"], "images")
        metadata = _decode_json(row["metadata"], "metadata", list)
        general = _decode_json(row["general_metadata"], "general_metadata", dict)
        return cls(texts=texts, images=images, metadata=metadata, general_metadata=general)

    def to_row(self) -> dict[str, Any]:
        """The inverse of ``from_row``: the parquet layout, metadata columns as JSON strings."""
        return {
            "images": list(self.images),
            "metadata": json.dumps(self.metadata, ensure_ascii=False),
            "general_metadata": json.dumps(self.general_metadata, ensure_ascii=False),
            "texts": list(self.texts),
        }

    @property
    def url(self) -> str | None:
        return self.general_metadata.get("url")

    @property
    def n_images(self) -> int:
        return sum(1 for i in self.images if i is not None)

    @property
    def n_texts(self) -> int:
        return sum(1 for t in self.texts if t is not None)

    def full_text(self) -> str:
        """All non-empty texts joined with ``"\\n\\n"`` (what document-level filters score)."""
        return PARAGRAPH_SEPARATOR.join(t for t in self.texts if t)


def _as_list(value: Any, column: str) -> list:
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy arrays from pandas
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ValueError(f"OBELICS column {column!r} must be a list, got {type(value).__name__}")
    return value


def _decode_json(value: Any, column: str, want: type) -> Any:
    if isinstance(value, bytes | str):
        try:  # strict and bounded: UTF-8, nesting depth, digits (a hostile row is a drop, not a crash)
            value = loads_bytes(value) if isinstance(value, bytes) else loads(value)
        except JsonRecordError as e:
            raise ValueError(f"OBELICS column {column!r} is not valid JSON: {e}") from e
    elif want is list:
        value = _as_list(value, column) if value is not None else value
    if not isinstance(value, want):
        kind = "a JSON list" if want is list else "a JSON object"
        raise ValueError(f"OBELICS column {column!r} must hold {kind}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), type(value).__name__)


def _validate(texts: Any, images: Any, metadata: Any, general: Any) -> None:
    for name, value in (("texts", texts), ("images", images), ("metadata", metadata)):
        if not isinstance(value, list):
            raise ValueError(f"OBELICS {name} must be a list, got {type(value).__name__}")
    if not isinstance(general, dict):
        raise ValueError(f"OBELICS general_metadata must be an object, got {_json_type(general)}")
    if not len(texts) == len(images) == len(metadata):
        raise ValueError(
            "OBELICS texts, images and metadata must be parallel lists: "
            f"len(texts)={len(texts)}, len(images)={len(images)}, len(metadata)={len(metadata)}"
        )
    for i, (text, image, meta) in enumerate(zip(texts, images, metadata, strict=True)):
        if text is not None and image is not None:
            raise ValueError(f"OBELICS index {i}: both text and image are set (exactly one must be)")
        if text is None and image is None:
            raise ValueError(f"OBELICS index {i}: neither text nor image is set (exactly one must be)")
        if text is not None:
            if not isinstance(text, str):
                raise ValueError(f"OBELICS index {i}: text must be a string, got {_json_type(text)}")
            if meta is not None:
                raise ValueError(f"OBELICS index {i}: metadata must be null at a text position, got {_json_type(meta)}")
        else:
            if not isinstance(image, str):
                raise ValueError(f"OBELICS index {i}: image must be a URL string, got {_json_type(image)}")
            if not isinstance(meta, dict):
                raise ValueError(
                    f"OBELICS index {i}: metadata must be an object at an image position, got {_json_type(meta)}"
                )


# The token with the spaces/tabs around it, inside a line.
_EOD_INLINE = re.compile(r"[ \t]*" + END_OF_DOCUMENT + r"[ \t]*")


def strip_end_of_document_text(text: str) -> tuple[str, int]:
    """Remove ``END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED`` from one text; returns (text, tokens removed).

    The text is split into paragraphs on ``"\\n\\n"``. A paragraph that is only the token (after
    ``strip()``) is removed. Elsewhere each occurrence, with the spaces/tabs around it, is replaced by
    one space and the line holding it is stripped; a line that becomes empty is removed, and so is a
    paragraph that becomes empty. Lines and paragraphs without the token are left byte-identical.
    The result can be ``""``.
    """
    if END_OF_DOCUMENT not in text:
        return text, 0
    removed = 0
    kept: list[str] = []
    for paragraph in text.split(PARAGRAPH_SEPARATOR):
        if END_OF_DOCUMENT not in paragraph:
            kept.append(paragraph)
            continue
        lines = []
        for line in paragraph.split("\n"):
            n = line.count(END_OF_DOCUMENT)
            if n:
                removed += n
                line = _EOD_INLINE.sub(" ", line).strip()
                if not line:
                    continue
            lines.append(line)
        if any(line.strip() for line in lines):
            kept.append("\n".join(lines))
    return PARAGRAPH_SEPARATOR.join(kept), removed


def strip_end_of_document(doc: ObelicsDocument) -> tuple[ObelicsDocument, int]:
    """``strip_end_of_document_text`` on every text of ``doc``; a text that becomes empty is dropped
    (with its position). Returns a new document and the number of tokens removed."""
    total = 0
    keep: list[int] = []
    texts = list(doc.texts)
    for i, text in enumerate(texts):
        if text is not None:
            cleaned, n = strip_end_of_document_text(text)
            total += n
            if n and not cleaned.strip():
                continue
            texts[i] = cleaned
        keep.append(i)
    if total == 0:
        return doc, 0
    return (
        ObelicsDocument(
            texts=[texts[i] for i in keep],
            images=[doc.images[i] for i in keep],
            metadata=[doc.metadata[i] for i in keep],
            general_metadata=doc.general_metadata,
        ),
        total,
    )
