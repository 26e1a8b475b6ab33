"""SFT inputs with planted duplicates and planted benchmark contamination, in real layouts.

Images are random Pillow drawings (distinct under perceptual hashes); planted copies are exact, resized,
re-encoded or slightly brightened versions of other images. Everything returned says which keys are
planted, so tests can assert that every planted case is found and nothing else is dropped.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

WORDS = [
    "red",
    "blue",
    "green",
    "yellow",
    "chart",
    "table",
    "value",
    "year",
    "total",
    "share",
    "price",
    "city",
    "river",
    "mountain",
    "person",
    "dog",
    "cat",
    "bus",
    "train",
    "street",
    "window",
    "sign",
    "bottle",
    "plate",
    "tree",
    "cloud",
    "house",
    "bridge",
    "number",
    "letter",
    "page",
    "document",
    "figure",
]


def drawing(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A random drawing: a two-colour gradient, rectangles, ellipses and lines at random places."""
    rng = random.Random(seed)
    w, h = size
    a = [rng.randrange(256) for _ in range(3)]
    b = [rng.randrange(256) for _ in range(3)]
    im = Image.new("RGB", size)
    px = im.load()
    horizontal = rng.random() < 0.5
    for y in range(h):
        for x in range(w):
            t = x / w if horizontal else y / h
            px[x, y] = tuple(int(a[i] * (1 - t) + b[i] * t) for i in range(3))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(4, 8)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = min(w, x0 + rng.randint(10, w // 2)), min(h, y0 + rng.randint(10, h // 2))
        color = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("rect", "ellipse", "line"))
        if shape == "rect":
            d.rectangle((x0, y0, x1, y1), fill=color)
        elif shape == "ellipse":
            d.ellipse((x0, y0, x1, y1), fill=color)
        else:
            d.line((x0, y0, x1, y1), fill=color, width=rng.randint(2, 6))
    return im


def encode(im: Image.Image, fmt: str = "PNG", quality: int = 92) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


VARIANTS = {
    "exact": lambda im: encode(im),
    "resized": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "upscaled": lambda im: encode(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC), "JPEG", 85),
    "reencoded": lambda im: encode(im, "JPEG", 60),
    "brightened": lambda im: encode(ImageEnhance.Brightness(im).enhance(1.06)),
}


def question(rng: random.Random, words: int = 9) -> str:
    return "What is the " + " ".join(rng.choice(WORDS) for _ in range(words)) + " shown here?"


def answer(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))


@dataclass
class Planted:
    """Which keys each planted case should drop, and with which reason."""

    expected: dict[str, str] = field(default_factory=dict)  # key -> reason (prefix)
    counts: dict[str, int] = field(default_factory=dict)  # source -> rows written


def write_source(root: Path, name: str, rows: list[dict], images: dict[str, bytes], planted: Planted) -> Path:
    """An sft jsonl source (``{"id", "images": [file], "turns"}``) with its image folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in images.items():
        (folder / file).write_bytes(data)
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    planted.counts[name] = len(rows)
    return path


def make_dedup_inputs(root: Path, n: int = 40, seed: int = 0) -> tuple[dict[str, Path], Planted]:
    """Sources ``alpha`` and ``beta``: distinct samples plus planted image and text near-duplicates of
    ``alpha`` samples (in ``alpha`` itself and in ``beta``)."""
    rng = random.Random(seed)
    planted = Planted()
    paths = {}
    base: list[tuple[Image.Image, list[dict]]] = []
    for source, offset in (("alpha", 0), ("beta", 10_000)):
        rows, files = [], {}
        for i in range(n):
            im = drawing(seed * 100_000 + offset + i)
            reply = answer(rng) if i != 7 else " ".join(rng.choice(WORDS) for _ in range(30))
            turns = [{"user": question(rng), "assistant": reply}]
            if source == "alpha":
                base.append((im, turns))
            file = f"{source}-{i}.png"
            files[file] = encode(im)
            rows.append({"id": f"{source}-{i}", "images": [file], "turns": turns})
        for j, variant in enumerate(VARIANTS):  # image near-duplicates of alpha's samples
            im, _ = base[j]
            key = f"{source}-dup-{variant}"
            file = f"{key}.{'jpg' if variant in ('reencoded', 'upscaled') else 'png'}"
            files[file] = VARIANTS[variant](im)
            rows.append({"id": key, "images": [file], "turns": [{"user": question(rng), "assistant": answer(rng)}]})
            planted.expected[key] = "near_duplicate_image"
        # a text near-duplicate of alpha-7's conversation (one word changed) on a new image
        _, turns = base[7]
        changed = turns[0]["assistant"].split()
        changed[len(changed) // 2] = "zebra"
        key = f"{source}-dup-text"
        files[f"{key}.png"] = encode(drawing(seed * 100_000 + offset + 5_000))
        rows.append(
            {
                "id": key,
                "images": [f"{key}.png"],
                "turns": [{"user": turns[0]["user"].upper(), "assistant": " ".join(changed)}],
            }
        )
        planted.expected[key] = "near_duplicate_text"
        paths[source] = write_source(root, source, rows, files, planted)
    return paths, planted


def make_benchmark_inputs(root: Path, seed: int = 1) -> tuple[dict[str, Path], dict[str, Path], Planted]:
    """A training source ``train`` and two benchmarks (``mathvista``: image folder + questions jsonl;
    ``chartbench``: questions only). Planted contamination: benchmark images (exact, resized, re-encoded)
    and benchmark questions (verbatim, near-identical) in the training set."""
    rng = random.Random(seed)
    planted = Planted()
    bench_images = [drawing(900_000 + i) for i in range(12)]
    bench_questions = [question(rng, 12) for _ in range(12)]
    chart_questions = [question(rng, 12) for _ in range(6)]
    mv = root / "mathvista"
    (mv / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (im, q) in enumerate(zip(bench_images, bench_questions, strict=True)):
        (mv / "images" / f"{i}.png").write_bytes(encode(im))
        lines.append(json.dumps({"image": f"{i}.png", "question": q}))
    (mv / "questions.jsonl").write_text("\n".join(lines) + "\n")
    cb = root / "chartbench"
    cb.mkdir(parents=True, exist_ok=True)
    (cb / "questions.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in chart_questions))
    rows, files = [], {}
    for i in range(40):  # clean training samples
        file = f"train-{i}.png"
        files[file] = encode(drawing(700_000 + i))
        rows.append(
            {"id": f"train-{i}", "images": [file], "turns": [{"user": question(rng), "assistant": answer(rng)}]}
        )
    for j, variant in enumerate(("exact", "resized", "reencoded")):  # benchmark images, new questions
        key = f"train-bench-image-{variant}"
        file = f"{key}.{'jpg' if variant == 'reencoded' else 'png'}"
        files[file] = VARIANTS[variant](bench_images[j])
        rows.append({"id": key, "images": [file], "turns": [{"user": question(rng), "assistant": answer(rng)}]})
        planted.expected[key] = "contaminated_image:mathvista"
    # benchmark questions on new images: verbatim, and near-identical (case, punctuation, one extra word)
    for key, q, bench in (
        ("train-bench-question-verbatim", bench_questions[5], "mathvista"),
        ("train-bench-question-near", bench_questions[6].lower().replace("?", "") + " please?", "mathvista"),
        ("train-chart-question", chart_questions[2], "chartbench"),
    ):
        file = f"{key}.png"
        files[file] = encode(drawing(800_000 + len(rows)))
        rows.append({"id": key, "images": [file], "turns": [{"user": q, "assistant": answer(rng)}]})
        planted.expected[key] = f"contaminated_question:{bench}"
    # both the image and the question of a benchmark item
    key = "train-bench-both"
    files[f"{key}.png"] = encode(bench_images[9])
    rows.append({"id": key, "images": [f"{key}.png"], "turns": [{"user": bench_questions[9], "assistant": "7"}]})
    planted.expected[key] = "contaminated_image_and_question:mathvista"
    # a short generic question that a benchmark also asks must NOT match on text alone
    (cb / "questions.jsonl").write_text(
        (cb / "questions.jsonl").read_text() + json.dumps({"question": "What is this?"}) + "\n"
    )
    key = "train-generic-question"
    files[f"{key}.png"] = encode(drawing(800_500))
    rows.append({"id": key, "images": [f"{key}.png"], "turns": [{"user": "What is this?", "assistant": "a chart"}]})
    train = write_source(root, "train", rows, files, planted)
    return {"train": train}, {"mathvista": mv, "chartbench": cb}, planted
