"""FineVision test inputs in the hub layout: ``<root>/<subset>/train-0000k-of-0000n.parquet`` with the real columns
and Arrow types (``images``: list of Image ``{bytes, path}``, ``texts``: list of ``{user, assistant}``, ``source``:
string, ``<axis>_ratings``: list of int64, ``<axis>_min``: int64; HF features metadata), several row groups per file,
distinct drawn images, planted defects, and the expected outcome of every row.

``make_finevision(root, {"CoSyn_400k_chart": 12, "text_openhermes_2_5": 6})`` -> ``{"root": root, "subsets":
{subset: {...}}}``; per subset: ``rows``, ``kept`` (samples the reader keeps and the probe passes), ``drops``
(``{"read"|"probe": {reason: n}}``), ``files`` and ``expected`` (per row, in dataset order: ``key``, ``index``,
and either ``images``/``turns``/``meta`` for a kept row or ``step``/``reason`` for a dropped one).

Subsets named ``text_*`` are text-only (no images) and their files have only the text axes (relevance, formatting):
the image-conditioned axes are absent from the file. In the other subsets every 7th row (i % 7 == 6) has null
``image_correspondence`` ratings and minimum: that axis is absent from its meta.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.sources.base import sanitize_key
from tests.sft_data import drawing, encode

AXES = ("relevance", "visual_dependency", "image_correspondence", "formatting")  # the order of the hub's columns
TEXT_AXES = ("relevance", "formatting")
SCALE = (1, 2, 3, 4, 4, 5, 5, 5, 5, 5)  # ratings skewed high, as judges rate most turns well
IMAGE_SIZE = (64, 48)

# A planted defect -> (accounting step, drop reason) it must produce in a build.
BAD_KINDS: dict[str, tuple[str, str]] = {
    "null_texts": ("read", "invalid_record:turns"),
    "ratings_short": ("read", "ratings_not_per_turn:relevance"),
    "rating_out_of_range": ("read", "invalid_rating:formatting"),
    "null_rating": ("read", "invalid_rating:relevance"),
    "min_mismatch": ("read", "rating_min_mismatch:formatting"),
    "min_out_of_range": ("read", "invalid_rating:relevance"),
    "corrupt_image": ("probe", "image_unreadable"),
}


def finevision_schema(axes: tuple[str, ...] = AXES) -> pa.Schema:
    """The Arrow schema of a FineVision parquet file (with the ``huggingface`` features metadata)."""
    import datasets

    turn = {"user": datasets.Value("string"), "assistant": datasets.Value("string")}
    features: dict[str, Any] = {
        "images": datasets.List(datasets.Image()),
        "texts": datasets.List(turn),
        "source": datasets.Value("string"),
    }
    for axis in axes:
        features[f"{axis}_ratings"] = datasets.List(datasets.Value("int64"))
        features[f"{axis}_min"] = datasets.Value("int64")
    return datasets.Features(features).arrow_schema


def rating(subset: str, row: int, turn: int, axis: str) -> int:
    return SCALE[hashlib.sha256(f"{subset}:{row}:{turn}:{axis}".encode()).digest()[0] % len(SCALE)]


def row_uid(subset_index: int, row: int) -> int:
    """The drawing seed of a row's image (``tests.sft_data.drawing``): tests derive near-duplicates from it."""
    return 7_000_000 + 1000 * subset_index + row


def row_image(subset_index: int, row: int) -> bytes:
    return encode(drawing(row_uid(subset_index, row), IMAGE_SIZE))


def answer_text(subset: str, i: int, t: int) -> str:
    words = " ".join(["value"] * (1 + (i + t) % 5))
    return f"Answer {t} for row {i} of {subset}: the {words} is {i * 10 + t}."


def make_finevision(
    root: Path,
    subsets: dict[str, int],
    *,
    files_per_subset: int = 1,
    row_group_size: int = 4,
    bad: dict[str, list[str]] | None = None,
    images: dict[tuple[str, int], bytes] | None = None,
) -> dict[str, Any]:
    """Write a FineVision tree under ``root`` (see the module docstring for what comes back).

    ``bad``: subset -> defects (keys of ``BAD_KINDS``), one row each, on rows 1, 1 + step, ...
    ``images``: (subset, row) -> image bytes that replace that row's drawing (planted duplicates, contamination).
    """
    root = Path(root)
    bad, images = bad or {}, images or {}
    out: dict[str, Any] = {"root": root, "subsets": {}}
    for s_index, (subset, n_rows) in enumerate(subsets.items()):
        defects = list(bad.get(subset, []))
        if any(d not in BAD_KINDS for d in defects) or len(defects) > n_rows:
            raise ValueError(f"bad[{subset}]: unknown defects or more defects than rows: {defects}")
        step = max(1, n_rows // max(1, len(defects)))
        defect_at = {(1 + i * step) % n_rows: d for i, d in enumerate(defects)}
        text_only = subset.startswith("text_")
        axes = TEXT_AXES if text_only else AXES
        rows, expected = [], []
        for i in range(n_rows):
            defect = defect_at.get(i)
            n_turns = 1 + i % 4
            pics = [] if text_only else [images.get((subset, i)) or row_image(s_index, i)]
            structs: list[dict[str, Any]] = [{"bytes": b, "path": None} for b in pics]
            turns = [
                {"user": f"{subset} question {i}.{t}: what is shown?", "assistant": answer_text(subset, i, t)}
                for t in range(n_turns)
            ]
            ratings = {axis: [rating(subset, i, t, axis) for t in range(n_turns)] for axis in axes}
            unrated = not text_only and i % 7 == 6
            source = f"{subset}(origin)" if i % 2 else subset
            row: dict[str, Any] = {"images": structs, "texts": turns, "source": source}
            for axis in axes:
                null = unrated and axis == "image_correspondence"
                row[f"{axis}_ratings"] = None if null else list(ratings[axis])
                row[f"{axis}_min"] = None if null else min(ratings[axis])
            if unrated:
                del ratings["image_correspondence"]
            if defect == "null_texts":
                row["texts"] = None
            elif defect == "ratings_short":
                row["relevance_ratings"] = row["relevance_ratings"][:-1] if n_turns > 1 else []
            elif defect == "rating_out_of_range":
                row["formatting_ratings"][0] = 7
            elif defect == "null_rating":
                row["relevance_ratings"][0] = None
            elif defect == "min_mismatch":
                row["formatting_min"] = row["formatting_min"] % 5 + 1  # a rating, but not the minimum
            elif defect == "min_out_of_range":
                row["relevance_min"] = 0
            elif defect == "corrupt_image":
                row["images"] = [{"bytes": b"<html>not an image</html>", "path": "broken.jpg"}]
            rows.append(row)
            entry: dict[str, Any] = {"index": i, "defect": defect}
            if defect is not None:
                entry["step"], entry["reason"] = BAD_KINDS[defect]
            else:
                meta: dict[str, Any] = {"config": subset, "finevision_source": source, "ratings": ratings}
                meta.update({f"{axis}_min": min(v) for axis, v in ratings.items()})
                entry.update(images=pics, turns=turns, meta=meta)
            expected.append(entry)
        files = _write_files(root / subset, rows, axes, files_per_subset, row_group_size)
        for e, (file_index, r) in zip(expected, files["positions"], strict=True):
            e["key"] = sanitize_key(f"{subset}-{file_index:04d}-{r:09d}")
        drops: dict[str, dict[str, int]] = {"read": {}, "probe": {}}
        for e in expected:
            if "reason" in e:
                drops[e["step"]][e["reason"]] = drops[e["step"]].get(e["reason"], 0) + 1
        out["subsets"][subset] = {
            "rows": n_rows,
            "kept": sum(1 for e in expected if "turns" in e),
            "drops": drops,
            "files": files["paths"],
            "expected": expected,
        }
    return out


def _write_files(
    folder: Path, rows: list[dict[str, Any]], axes: tuple[str, ...], n_files: int, row_group_size: int
) -> dict[str, Any]:
    """Rows split contiguously over ``n_files`` files named as on the hub; each row's (file index, row in file)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_files = max(1, min(n_files, len(rows)))
    per = -(-len(rows) // n_files)
    paths, positions = [], []
    for k in range(n_files):
        chunk = rows[k * per : (k + 1) * per]
        path = folder / f"train-{k:05d}-of-{n_files:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk, schema=finevision_schema(axes)), path, row_group_size=row_group_size)
        paths.append(path)
        positions += [(k, r) for r in range(len(chunk))]
    return {"paths": paths, "positions": positions}


def kept_rows(data: dict[str, Any], subset: str) -> list[dict[str, Any]]:
    return [e for e in data["subsets"][subset]["expected"] if "turns" in e]


def turn_filter_outcome(
    data: dict[str, Any], subset: str, minimums: dict[str, float], counter: Any = None
) -> dict[str, Any]:
    """By hand: turn-level ``score_filter`` steps (one per axis of ``minimums``, in that order) over a subset's
    kept rows. -> ``reports`` (per axis, as the step reports them), ``dropped`` ({index: axis}: rows that lost every
    turn at that axis) and ``kept`` ({index: (turns, ratings)})."""
    from shards.tokens import count_tokens

    count = counter or count_tokens
    counts = ("missing_kept", "unrated_turns_kept", "samples_changed", "turns_removed", "answer_tokens_removed")
    reports = {a: dict.fromkeys(counts, 0) for a in minimums}
    dropped: dict[int, str] = {}
    kept: dict[int, tuple[list[dict[str, str]], dict[str, list[int]]]] = {}
    for e in kept_rows(data, subset):
        turns, ratings = list(e["turns"]), {k: list(v) for k, v in e["meta"]["ratings"].items()}
        for axis, low in minimums.items():
            if axis not in ratings:
                reports[axis]["missing_kept"] += 1
                continue
            keep = [i for i, r in enumerate(ratings[axis]) if r >= low]
            gone = [i for i in range(len(turns)) if i not in keep]
            reports[axis]["turns_removed"] += len(gone)
            reports[axis]["answer_tokens_removed"] += sum(count(turns[i]["assistant"]) for i in gone)
            if not keep:
                dropped[e["index"]] = axis
                break
            reports[axis]["samples_changed"] += bool(gone)
            turns = [turns[i] for i in keep]
            ratings = {k: [v[i] for i in keep] for k, v in ratings.items()}
        else:
            kept[e["index"]] = (turns, ratings)
    return {"reports": reports, "dropped": dropped, "kept": kept}
