"""Cauldron / Docmatix test inputs in the HF layout: ``<root>/<config>/train-0000k-of-0000n-<hash>.parquet`` with the
real features (``images``: list of Image, ``texts``: list of ``{user, assistant, source}``, HF schema metadata), several
row groups per file, distinct Pillow-drawn images, optional planted defects, and the expected outcome of every row.

``make_cauldron(root, {"ai2d": 12, "images": 6})`` -> ``{"root": root, "configs": {config: {...}}}``; per config:
``rows`` (input rows), ``kept`` (samples a build keeps), ``drops`` (``{step: {reason: n}}``, steps ``read`` and
``probe``), ``files``, ``expected`` (per row, in dataset order: ``key``, ``file_index``, ``row``, and either
``images``/``turns``/``meta``/``image_sha256`` for a kept row or ``step``/``reason`` for a dropped one).
The config named ``images`` is Docmatix-like: 1-4 page images and many turns per row, one ``PDFA key`` per row.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

DOCMATIX_CONFIG = "images"

# A planted defect -> (accounting step, drop reason) it must produce in a build.
BAD_KINDS: dict[str, tuple[str, str]] = {
    "null_texts": ("read", "invalid_record:turns"),
    "empty_texts": ("read", "invalid_record:turns"),
    "null_user": ("read", "invalid_record:turns"),
    "null_assistant": ("read", "invalid_record:turns"),
    "null_image": ("read", "invalid_image_field"),
    "missing_image_file": ("read", "missing_image_file"),
    "corrupt_image": ("probe", "image_unreadable"),
}


def cauldron_schema() -> pa.Schema:
    """The Arrow schema of a Cauldron parquet file, with the ``huggingface`` features metadata."""
    import datasets

    turn = {"user": datasets.Value("string"), "assistant": datasets.Value("string"), "source": datasets.Value("string")}
    features = datasets.Features({"images": datasets.List(datasets.Image()), "texts": datasets.List(turn)})
    return features.arrow_schema


def draw_image(uid: int, seed: int = 0, size: tuple[int, int] = (24, 16)) -> bytes:
    """A small PNG unique to ``(uid, seed)``: the uid is written into the first pixels, so bytes never repeat."""
    rnd = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    im = Image.new("RGB", size, (rnd[0], rnd[1], rnd[2]))
    draw = ImageDraw.Draw(im)
    x, y = rnd[3] % (size[0] // 2), rnd[4] % (size[1] // 2)
    draw.rectangle((x, y, x + size[0] // 3, y + size[1] // 3), fill=(rnd[5], rnd[6], rnd[7]))
    for i in range(4):  # uid in base 256 along the top row
        im.putpixel((i, 0), ((uid >> (8 * i)) & 255, seed & 255, 77))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def write_cauldron_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 4) -> None:
    """Rows (``images``: list of ``{bytes, path}``, ``texts``: list of turns) as an HF-style parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=cauldron_schema())
    pq.write_table(table, path, row_group_size=row_group_size)


def make_cauldron(
    root: Path,
    configs: dict[str, int],
    *,
    seed: int = 0,
    files_per_config: int = 1,
    row_group_size: int = 4,
    split: str = "train",
    bad: dict[str, list[str]] | None = None,
    path_images: dict[str, int] | None = None,
    duplicates: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write a Cauldron-layout tree under ``root`` (see the module docstring for what comes back).

    ``bad``: config -> defects (keys of ``BAD_KINDS``), one row each, spread over the config's rows.
    ``path_images``: config -> how many rows store their images as files next to the parquet (``bytes`` null,
    ``path`` relative to the parquet's directory). ``duplicates``: config -> how many of its last rows reuse the
    images of its first rows (exact duplicates within the config).
    """
    root = Path(root)
    bad, path_images, duplicates = bad or {}, path_images or {}, duplicates or {}
    out: dict[str, Any] = {"root": root, "configs": {}}
    uid = seed * 1_000_000
    for c_index, (config, n_rows) in enumerate(configs.items()):
        defects = list(bad.get(config, []))
        unknown = [d for d in defects if d not in BAD_KINDS]
        if unknown or len(defects) > n_rows:
            raise ValueError(f"bad[{config}]: unknown defects {unknown} or more defects than rows")
        # Defects on rows 1, 1 + step, ... so they land in different row groups; path images on the last rows.
        step = max(1, n_rows // max(1, len(defects)))
        defect_at = {(1 + i * step) % n_rows: d for i, d in enumerate(defects)}
        n_dup = duplicates.get(config, 0)
        n_path = path_images.get(config, 0)
        config_dir = root / config
        rows, expected = [], []
        for i in range(n_rows):
            defect = defect_at.get(i)
            n_images = 1 + i % 4 if config == DOCMATIX_CONFIG else 1
            n_turns = 1 + (i * 7) % 12 if config == DOCMATIX_CONFIG else 1 + i % 3
            dup_of = i - (n_rows - n_dup) if i >= n_rows - n_dup and defect is None else None
            if dup_of is not None and (dup_of >= len(expected) or "images" not in expected[dup_of]):
                dup_of = None  # only good rows are copied
            if dup_of is not None:
                images = list(expected[dup_of]["images"])
            else:
                images = [
                    draw_image(uid + j, seed, (20, 28) if config == DOCMATIX_CONFIG else (24, 16))
                    for j in range(n_images)
                ]
                uid += n_images
            structs: list[dict[str, Any] | None] = [{"bytes": b, "path": None} for b in images]
            if n_path and i >= n_rows - n_path and defect is None:
                structs = []
                for j, b in enumerate(images):
                    rel = f"images/{config}-{i:05d}-{j}.png"
                    (config_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    (config_dir / rel).write_bytes(b)
                    structs.append({"bytes": None, "path": rel})
            turns = [
                {
                    "user": f"{config} question {i}.{t}: what is shown?",
                    "assistant": f"Answer {t} for row {i} of {config}.",
                }
                for t in range(n_turns)
            ]
            if config == DOCMATIX_CONFIG:
                sources = [f"PDFA key: {1000 + i}"] * n_turns
            elif i % 5 == 4 and n_turns > 1:  # mixed per-turn sources
                sources = [f"{config}:{t}" for t in range(n_turns)]
            else:
                sources = [config] * n_turns
            texts: list[dict[str, Any]] | None = [{**t, "source": s} for t, s in zip(turns, sources, strict=True)]
            if defect == "null_texts":
                texts = None
            elif defect == "empty_texts":
                texts = []
            elif defect in ("null_user", "null_assistant"):
                texts[0][defect.removeprefix("null_")] = None  # type: ignore[index]
            elif defect == "null_image":
                structs = [None]
            elif defect == "missing_image_file":
                structs = [{"bytes": None, "path": f"images/missing-{config}-{i}.png"}]
            elif defect == "corrupt_image":
                structs = [{"bytes": b"<html>not an image</html>", "path": "broken.jpg"}]
            rows.append({"images": structs, "texts": texts})
            entry: dict[str, Any] = {"index": i}
            if defect is not None:
                entry["step"], entry["reason"] = BAD_KINDS[defect]
                entry["defect"] = defect
            else:
                meta: dict[str, Any] = {"config": config}
                if len(set(sources)) == 1:
                    meta["source_id"] = sources[0]
                else:
                    meta["turn_sources"] = sources
                entry.update(
                    images=images,
                    turns=turns,
                    meta=meta,
                    image_sha256=[hashlib.sha256(b).hexdigest() for b in images],
                    duplicate_of=dup_of,
                )
            expected.append(entry)
        files = _write_files(config_dir, split, rows, files_per_config, row_group_size, f"{seed}:{c_index}")
        for e, (file_index, row) in zip(expected, files["positions"], strict=True):
            e["file_index"], e["row"] = file_index, row
            position = f"{file_index:04d}-{row:09d}"
            e["key"] = f"{config}-{position}" if split == "train" else f"{config}-{split}-{position}"
        drops: dict[str, dict[str, int]] = {"read": {}, "probe": {}}
        for e in expected:
            if "reason" in e:
                drops[e["step"]][e["reason"]] = drops[e["step"]].get(e["reason"], 0) + 1
        out["configs"][config] = {
            "rows": n_rows,
            "kept": sum(1 for e in expected if "images" in e),
            "drops": drops,
            "files": files["paths"],
            "expected": expected,
        }
    return out


def _write_files(
    config_dir: Path, split: str, rows: list[dict[str, Any]], n_files: int, row_group_size: int, salt: str
) -> dict[str, Any]:
    """Rows split contiguously over ``n_files`` files named like the hub's; each row's (file index, row in file)."""
    n_files = max(1, min(n_files, len(rows))) if rows else 1
    per = -(-len(rows) // n_files) if rows else 0
    paths, positions = [], []
    for k in range(n_files):
        chunk = rows[k * per : (k + 1) * per]
        digest = hashlib.sha256(f"{salt}:{k}".encode()).hexdigest()[:16]
        path = config_dir / f"{split}-{k:05d}-of-{n_files:05d}-{digest}.parquet"
        write_cauldron_parquet(path, chunk, row_group_size)
        paths.append(path)
        positions += [(k, r) for r in range(len(chunk))]
    return {"paths": paths, "positions": positions}


def kept_rows(data: dict[str, Any], config: str) -> list[dict[str, Any]]:
    return [e for e in data["configs"][config]["expected"] if "images" in e]
