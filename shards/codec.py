"""Records <-> tar members. The member set is fixed per kind so every sample of a shard has the same
members (``datasets.load_dataset("webdataset")`` requires it):

- pair:        ``KEY.<jpg|png|webp>`` (one format per dataset), ``KEY.txt`` (caption), ``KEY.json``
- sft:         ``KEY.images.mp`` (msgpack list of image bytes, possibly empty), ``KEY.json`` (turns)
- interleaved: ``KEY.images.mp`` (the images in document order), ``KEY.json`` (texts, null where an
               image stands)
- pdf:         ``KEY.pdf``, ``KEY.json`` (pages with lines and bboxes)

``KEY.json`` always holds ``kind``, ``source`` and ``meta``; ``meta`` is a JSON *string* because
``datasets`` infers one struct type from the first samples and would silently drop keys that vary.
"""

from __future__ import annotations

import json
from typing import Any, cast

import msgpack

from schemas import InterleavedRecord, Page, PageLine, PairRecord, PdfRecord, Record, SftRecord, Turn, parse_record
from schemas.errors import RecordError
from shards.atomic import canonical_json

PAIR_IMAGE_EXTS = ("jpg", "png", "webp")
_BINARY_FIELDS = ("image", "images", "pdf")


def _packb(images: list[bytes]) -> bytes:
    """``msgpack.packb``, typed: it returns bytes (msgpack's untyped code also lets pyright infer None)."""
    return cast(bytes, msgpack.packb(images))


def _json_member(record: Record, **fields: Any) -> bytes:
    body = {"kind": record.kind, "source": record.source, "meta": canonical_json(record.meta), **fields}
    return canonical_json(body).encode("utf-8")


def encode_record(record: Record, pair_image_ext: str = "jpg") -> dict[str, bytes]:
    """Tar members (extension -> bytes) of a record. Pair images must already be in ``pair_image_ext``."""
    if isinstance(record, PairRecord):
        return {
            pair_image_ext: record.image,
            "txt": record.caption.encode("utf-8"),
            "json": _json_member(record),
        }
    if isinstance(record, SftRecord):
        turns = [{"user": t.user, "assistant": t.assistant} for t in record.turns]
        return {"images.mp": _packb(list(record.images)), "json": _json_member(record, turns=turns)}
    if isinstance(record, InterleavedRecord):
        images = [im for im in record.images if im is not None]
        return {"images.mp": _packb(images), "json": _json_member(record, texts=list(record.texts))}
    if isinstance(record, PdfRecord):
        pages = [{"lines": [{"text": ln.text, "bbox": list(ln.bbox)} for ln in p.lines]} for p in record.pages]
        return {"pdf": record.pdf, "json": _json_member(record, pages=pages)}
    raise TypeError(f"not a record: {type(record).__name__}")


def decode_sample(key: str, members: dict[str, bytes], validate: bool = False) -> Record:
    """Rebuild a record from its tar members. Members that do not decode (bad JSON, msgpack or UTF-8, a
    missing field) raise :class:`RecordError`, never another error. ``validate`` also checks every field
    (shards from elsewhere); without it the record is built unchecked (our own freshly written shards)."""
    if "json" not in members:
        raise RecordError("json", "missing_member", f"sample {key!r} has no .json member")
    try:
        kind, fields = _fields(key, members)
    except RecordError:
        raise
    except (
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        RecursionError,
        msgpack.UnpackException,
    ) as exc:
        raise RecordError("members", "undecodable_sample", f"sample {key!r}: {type(exc).__name__}: {exc}") from None
    if not validate:
        return _construct(kind, fields)
    _check_utf8(key, fields)
    try:
        return parse_record(kind, fields)
    except RecordError as exc:
        raise RecordError(exc.field, exc.reason, f"sample {key!r}: {exc.detail}") from None


def _check_utf8(key: str, fields: dict[str, Any]) -> None:
    """JSON escapes can smuggle in lone surrogates (``"\\ud800"``), which no UTF-8 file can store: such text
    is not ours, and writing it out again would fail far from here."""
    texts = {k: v for k, v in fields.items() if k not in _BINARY_FIELDS}
    try:
        json.dumps(texts, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError("text", "invalid_utf8", f"sample {key!r}: {exc}") from None


def _fields(key: str, members: dict[str, bytes]) -> tuple[str, dict[str, Any]]:
    """(kind, the record's fields as plain values) from its members; raises on anything malformed."""
    try:
        body = json.loads(members["json"])
        kind, source, meta = body["kind"], body["source"], json.loads(body["meta"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError("json", "bad_json_member", f"sample {key!r}: {exc}") from None
    fields: dict[str, Any] = {"key": key, "source": source, "meta": meta}
    if kind == "pair":
        exts = [e for e in PAIR_IMAGE_EXTS if e in members]
        if not exts or "txt" not in members:
            raise RecordError("image", "missing_member", f"pair sample {key!r} lacks its image or caption")
        return kind, {**fields, "image": members[exts[0]], "caption": members["txt"].decode("utf-8")}
    if kind == "sft":
        turns = [{"user": t["user"], "assistant": t["assistant"]} for t in body["turns"]]
        return kind, {**fields, "images": list(_unpack_list(key, members["images.mp"])), "turns": turns}
    if kind == "interleaved":
        stored, texts = _unpack_list(key, members["images.mp"]), list(body["texts"])
        if len(stored) != sum(t is None for t in texts):
            raise RecordError("images", "image_count", f"sample {key!r}: {len(stored)} images for the texts' gaps")
        images = iter(stored)
        return kind, {**fields, "texts": texts, "images": [next(images) if t is None else None for t in texts]}
    if kind == "pdf":
        pages = [
            {"lines": [{"text": ln["text"], "bbox": tuple(ln["bbox"])} for ln in p["lines"]]} for p in body["pages"]
        ]
        return kind, {**fields, "pdf": members["pdf"], "pages": pages}
    raise RecordError("kind", "unknown_kind", f"sample {key!r} has unknown kind {kind!r}")


def _unpack_list(key: str, data: bytes) -> list[Any]:
    """The ``images.mp`` member: a msgpack list."""
    try:
        items = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise RecordError("images.mp", "bad_msgpack_member", f"sample {key!r}: not msgpack ({why})") from None
    if not isinstance(items, list):
        raise RecordError("images.mp", "bad_msgpack_member", f"sample {key!r}: a {type(items).__name__}, not a list")
    return items


def _construct(kind: str, f: dict[str, Any]) -> Record:
    """The record, unchecked (``model_construct``): fast, for shards we wrote ourselves."""
    if kind == "pair":
        return PairRecord.model_construct(**f)
    if kind == "sft":
        turns = [Turn.model_construct(**t) for t in f["turns"]]
        return SftRecord.model_construct(**{**f, "turns": turns})
    if kind == "interleaved":
        return InterleavedRecord.model_construct(**f)
    pages = [Page.model_construct(lines=[PageLine.model_construct(**ln) for ln in p["lines"]]) for p in f["pages"]]
    return PdfRecord.model_construct(**{**f, "pages": pages})
