"""Small shared test helpers: images drawn with Pillow, records of every kind, writing shards."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw

from schemas import InterleavedRecord, Page, PageLine, PairRecord, PdfRecord, Record, SftRecord, Turn
from shards.manifest import ShardInfo
from shards.writer import ShardWriter

# Not a real PDF: the shards must carry any bytes exactly (NUL, 0xff, CR/LF included).
PDF_BYTES = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n\x00\xff\r\n%%EOF\n"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (16, 12), seed: int = 0, mode: str = "RGB") -> bytes:
    """A small image with a little drawing on it, so different seeds give different bytes."""
    color = (seed * 37 % 256, seed * 91 % 256, 200, *((255,) if mode == "RGBA" else ()))
    im = Image.new(mode, size, color)
    ImageDraw.Draw(im).rectangle((1, 1, size[0] // 2, size[1] // 2), fill=(255, 255, 255, *color[3:]))
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def png(size: tuple[int, int] = (16, 12), seed: int = 0) -> bytes:
    return image_bytes("PNG", size, seed)


def jpeg(size: tuple[int, int] = (16, 12), seed: int = 0) -> bytes:
    return image_bytes("JPEG", size, seed)


def meta_for(i: int) -> dict:
    """Metadata whose keys vary between samples, with non-ASCII text and nested values."""
    choices = [
        {"url": f"https://example.org/{i}.jpg", "score": 0.25 + i},
        {"langue": "français", "标签": ["猫", "狗"], "n": i},
        {},
        {"nested": {"a": [1, 2, None], "b": True}, "emoji": "🐕"},
    ]
    return choices[i % len(choices)]


def long_caption(i: int) -> str:
    return f"{i}: Ein Hund läuft über die Wiese — 犬が草原を走る 🐕. " * 30


def pair_record(i: int, image: bytes | None = None, source: str = "laion") -> PairRecord:
    return PairRecord(
        key=f"pair-{i:04d}",
        source=source,
        meta=meta_for(i),
        image=image if image is not None else jpeg((16 + i, 12), seed=i),
        caption=long_caption(i),
    )


def sft_record(i: int, n_images: int = 1, source: str = "cauldron") -> SftRecord:
    images = [(png if j % 2 == 0 else jpeg)((10 + j, 8 + i), seed=i * 10 + j) for j in range(n_images)]
    turns = [
        Turn(user=f"Question {i}.{t}: qu'y a-t-il sur l'image ? 画像には何がありますか", assistant=f"Réponse {t} ✓")
        for t in range(1 + i % 3)
    ]
    return SftRecord(key=f"sft_{i:04d}", source=source, meta=meta_for(i), images=images, turns=turns)


def interleaved_record(i: int, source: str = "obelics") -> InterleavedRecord:
    texts: list[str | None] = [f"Intro {i} — ünïcödé", None, "middle\n\nparagraph", None]
    images: list[bytes | None] = [None, png((12, 9), seed=i), None, jpeg((9, 12), seed=i + 1)]
    if i % 2:  # documents of different lengths
        texts.append("closing words")
        images.append(None)
    return InterleavedRecord(key=f"doc-{i:04d}", source=source, meta=meta_for(i), texts=texts, images=images)


def pdf_record(i: int, source: str = "pdfa") -> PdfRecord:
    pages = [
        Page(
            lines=[PageLine(text=f"Line {i} — é", bbox=(0.1, 0.2, 0.5, 0.05)), PageLine(text="2.5%", bbox=(0, 0, 1, 1))]
        ),
        Page(lines=[] if i % 2 else [PageLine(text="page two", bbox=(0.125, 0.75, 0.3333333333333333, 0.1))]),
    ]
    return PdfRecord(key=f"{i:07d}", source=source, meta=meta_for(i), pdf=PDF_BYTES + bytes([i % 256]), pages=pages)


def write_shards(directory: Path, records: Iterable[Record], name: str = "ds", **writer_kwargs) -> list[ShardInfo]:
    with ShardWriter(directory, name, **writer_kwargs) as writer:
        for record in records:
            writer.write(record)
    return writer.shards


def dumps(records: Iterable[Record]) -> list[tuple[str, dict]]:
    """Comparable form of records: (kind, every field)."""
    return [(r.kind, r.model_dump()) for r in records]
