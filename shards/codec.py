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
from typing import Any

import msgpack

from schemas import InterleavedRecord, Page, PageLine, PairRecord, PdfRecord, Record, SftRecord, Turn
from schemas.errors import RecordError
from shards.atomic import canonical_json

PAIR_IMAGE_EXTS = ("jpg", "png", "webp")


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
        return {"images.mp": msgpack.packb(list(record.images)), "json": _json_member(record, turns=turns)}
    if isinstance(record, InterleavedRecord):
        images = [im for im in record.images if im is not None]
        return {"images.mp": msgpack.packb(images), "json": _json_member(record, texts=list(record.texts))}
    if isinstance(record, PdfRecord):
        pages = [{"lines": [{"text": ln.text, "bbox": list(ln.bbox)} for ln in p.lines]} for p in record.pages]
        return {"pdf": record.pdf, "json": _json_member(record, pages=pages)}
    raise TypeError(f"not a record: {type(record).__name__}")


def decode_sample(key: str, members: dict[str, bytes]) -> Record:
    """Rebuild a record from its tar members (trusted input: our own shards)."""
    if "json" not in members:
        raise RecordError("json", "missing_member", f"sample {key!r} has no .json member")
    try:
        body = json.loads(members["json"])
        kind, source, meta = body["kind"], body["source"], json.loads(body["meta"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError("json", "bad_json_member", f"sample {key!r}: {exc}") from None
    if kind == "pair":
        exts = [e for e in PAIR_IMAGE_EXTS if e in members]
        if not exts or "txt" not in members:
            raise RecordError("image", "missing_member", f"pair sample {key!r} lacks its image or caption")
        return PairRecord.model_construct(
            key=key, source=source, meta=meta, image=members[exts[0]], caption=members["txt"].decode("utf-8")
        )
    if kind == "sft":
        turns = [Turn.model_construct(user=t["user"], assistant=t["assistant"]) for t in body["turns"]]
        images = list(msgpack.unpackb(members["images.mp"]))
        return SftRecord.model_construct(key=key, source=source, meta=meta, images=images, turns=turns)
    if kind == "interleaved":
        stored = iter(msgpack.unpackb(members["images.mp"]))
        texts = body["texts"]
        images = [next(stored) if t is None else None for t in texts]
        return InterleavedRecord.model_construct(key=key, source=source, meta=meta, texts=texts, images=images)
    if kind == "pdf":
        pages = [
            Page.model_construct(
                lines=[PageLine.model_construct(text=ln["text"], bbox=tuple(ln["bbox"])) for ln in p["lines"]]
            )
            for p in body["pages"]
        ]
        return PdfRecord.model_construct(key=key, source=source, meta=meta, pdf=members["pdf"], pages=pages)
    raise RecordError("kind", "unknown_kind", f"sample {key!r} has unknown kind {kind!r}")
