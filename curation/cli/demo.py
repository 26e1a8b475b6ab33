"""The demo: inputs drawn with Pillow in real layouts (jsonl + image folder, HF-style parquet), with
planted bad data so the accounting has something to show, built by the built-in ``demo`` recipe."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")


def draw_shapes(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, list[tuple[str, str]]]:
    bg_name = rng.choice(["white", "black", "blue", "yellow"])
    im = Image.new("RGB", size, COLORS[bg_name])
    d = ImageDraw.Draw(im)
    shapes = []
    for _ in range(rng.randint(1, 3)):
        color = rng.choice([c for c in COLORS if c != bg_name])
        shape = rng.choice(SHAPES)
        w, h = size
        r = rng.randint(min(w, h) // 8, min(w, h) // 4)
        cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            d.ellipse(box, fill=COLORS[color])
        elif shape == "square":
            d.rectangle(box, fill=COLORS[color])
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[color])
        shapes.append((color, shape))
    return im, shapes


def _encode(im: Image.Image, fmt: str) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return b.getvalue()


def _caption(shapes: list[tuple[str, str]]) -> str:
    parts = [f"a {c} {s}" for c, s in shapes]
    return "A picture of " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]) + "."


def make_demo_inputs(root: Path, n_captions: int = 400, n_conversations: int = 120, seed: int = 0) -> dict[str, int]:
    """Write ``captions.jsonl`` + ``images/`` and ``conversations.parquet`` under ``root``; return planted counts."""
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    planted = {
        "missing_image_file": 0,
        "image_unreadable": 0,
        "image_empty": 0,
        "image_too_small": 0,
        "duplicate_image": 0,
        "invalid_record:caption": 0,
        "invalid_json": 0,
        "text_too_short": 0,
        "image_corrupt": 0,
    }
    lines = []
    for i in range(n_captions):
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        name = f"img_{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        size = (rng.randint(96, 200), rng.randint(96, 200))
        im, shapes = draw_shapes(rng, size)
        caption = _caption(shapes)
        row = {"id": f"cap{i:05d}", "file": name, "text": caption, "license": "CC0", "seed": i}
        kind = i % 50
        if kind == 7:  # missing file
            planted["missing_image_file"] += 1
            name = row["file"] = f"missing_{i:05d}.jpg"
        elif kind == 13:  # HTML saved as .jpg
            (images / name).write_bytes(b"<html><body>404 not found</body></html>")
            planted["image_unreadable"] += 1
        elif kind == 17:  # zero bytes
            (images / name).write_bytes(b"")
            planted["image_empty"] += 1
        elif kind == 21:  # too small
            (images / name).write_bytes(_encode(im.resize((16, 16)), fmt))
            planted["image_too_small"] += 1
        elif kind == 29 and i > 50:  # an exact copy of an earlier image under a new name
            src = images / f"img_{i - 50:05d}.{'png' if (i - 50) % 5 == 0 else 'jpg'}"
            (images / name).write_bytes(src.read_bytes())
            planted["duplicate_image"] += 1
        elif kind == 33:  # wrong JSON type
            (images / name).write_bytes(_encode(im, fmt))
            row["text"] = 12345
            planted["invalid_record:caption"] += 1
        elif kind == 41:  # empty caption
            (images / name).write_bytes(_encode(im, fmt))
            row["text"] = " "
            planted["text_too_short"] += 1
        elif kind == 45:  # truncated JPEG: header fine, data cut
            data = _encode(im, "JPEG")
            (images / name).write_bytes(data[: len(data) // 2])
            planted["image_corrupt"] += 1
        else:
            (images / name).write_bytes(_encode(im, fmt))
        lines.append(json.dumps(row))
        if i == n_captions // 2:
            lines.append("{this is not json")
            planted["invalid_json"] += 1
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")

    rows = []
    for i in range(n_conversations):
        text_only = i % 10 == 9
        n_images = 0 if text_only else (2 if i % 7 == 0 else 1)
        imgs, all_shapes = [], []
        for _ in range(n_images):
            im, shapes = draw_shapes(rng, (rng.randint(128, 224), rng.randint(128, 224)))
            imgs.append({"bytes": _encode(im, "PNG"), "path": None})
            all_shapes += shapes
        if text_only:
            turns = [
                {
                    "user": "What colour do you get by mixing blue and yellow?",
                    "assistant": "Green.",
                    "source": "demo-text",
                }
            ]
        else:
            turns = [
                {
                    "user": "How many shapes are in the image?"
                    if n_images == 1
                    else "How many shapes are there in total?",
                    "assistant": str(len(all_shapes)),
                    "source": "demo-vqa",
                },
                {
                    "user": "What colour is the first shape?",
                    "assistant": all_shapes[0][0].capitalize() + ".",
                    "source": "demo-vqa",
                },
            ]
            if i % 3 == 0:
                turns.append({"user": "Describe the image.", "assistant": _caption(all_shapes), "source": "demo-vqa"})
        rows.append({"images": imgs, "texts": turns})
    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    text_t = pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])
    schema = pa.schema([("images", pa.list_(image_t)), ("texts", pa.list_(text_t))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "conversations.parquet", row_group_size=40)
    return planted
