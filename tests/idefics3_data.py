"""Tiny inputs for the three SFT recipes, each dataset in its published layout:

- the Cauldron's 50 configs (HF parquet layout), with planted contamination and a planted near-duplicate;
- five benchmark folders (``images/`` + ``questions.jsonl``) for cauldron_filtered's decontamination;
- the datasets of idefics3_sft_extras: ShareGPT-4o and Geo170K (LLaVA json + images), IIW-400, LNQA, Cord-v2
  and Docmatix (Cauldron layout), and the nine text-only sets in their own json/jsonl shapes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from curation.sources.cauldron_catalog import cauldron_configs
from tests.cauldron_data import write_cauldron_parquet
from tests.sft_data import VARIANTS, answer, drawing, encode, question

EXTRAS = (
    "sharegpt4o", "iiw400", "lnqa", "cord_v2", "docmatix", "geo170k", "openhermes", "metamathqa",
    "atlas_math_sets", "mathinstruct", "orca_math", "goat", "lima", "dolly", "camel_ai_math",
)  # fmt: skip
BENCHMARKS = ("mmmu", "mathvista", "mmstar", "docvqa", "textvqa")
SIZE = (96, 72)


def _image(uid: int) -> bytes:
    return encode(drawing(uid, SIZE))


def _rows(rng: random.Random, uid: int, n: int, images: int = 1, turns: int = 2) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        pics = [{"bytes": _image(uid + 10 * i + k), "path": None} for k in range(images)]
        texts = [{"user": question(rng), "assistant": answer(rng), "source": "test"} for _ in range(turns)]
        rows.append({"images": pics, "texts": texts})
    return rows


def make_benchmarks(root: Path) -> dict[str, Any]:
    rng = random.Random(5)
    out: dict[str, Any] = {}
    for b, name in enumerate(BENCHMARKS):
        folder = root / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        items = []
        for i in range(2):
            uid = 5_000_000 + 100 * b + i
            (folder / "images" / f"{i}.png").write_bytes(_image(uid))
            items.append({"image": f"{i}.png", "question": question(rng, 12), "uid": uid})
        (folder / "questions.jsonl").write_text(
            "".join(json.dumps({"image": it["image"], "question": it["question"]}) + "\n" for it in items)
        )
        out[name] = items
    return out


def make_cauldron_inputs(root: Path, benchmarks: dict[str, Any], rows_per_config: int = 3) -> dict[str, Any]:
    """All 50 configs; planted: ai2d row 0 shows mmmu's image 0 (re-encoded), chartqa row 1 asks mathvista's
    question 1, vqav2 row 2 shows vqav2 row 0's image resized."""
    rng = random.Random(3)
    expected: dict[str, dict[str, int]] = {}
    for c, config in enumerate(sorted(cauldron_configs())):
        rows = _rows(rng, 1_000_000 + 1000 * c, rows_per_config, turns=rng.randint(1, 3))
        drops: dict[str, int] = {}
        if config == "ai2d":
            rows[0]["images"][0]["bytes"] = VARIANTS["reencoded"](drawing(benchmarks["mmmu"][0]["uid"], SIZE))
            drops["contaminated_image:mmmu"] = 1
        if config == "chartqa":
            rows[1]["texts"][0]["user"] = benchmarks["mathvista"][1]["question"]
            drops["contaminated_question:mathvista"] = 1
        if config == "vqav2":
            rows[2]["images"][0]["bytes"] = VARIANTS["resized"](drawing(1_000_000 + 1000 * c, SIZE))
            drops["near_duplicate_image"] = 1
        write_cauldron_parquet(root / config / "train-00000-of-00001-test.parquet", rows, row_group_size=2)
        expected[config] = {"rows": rows_per_config, **drops}
    return expected


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


def _llava(folder: Path, name: str, n: int, uid: int, rng: random.Random) -> list[dict[str, Any]]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        (folder / "images" / f"{name}{i}.png").write_bytes(_image(uid + i))
        first = f"<image>\n{question(rng)}" if i % 2 else f"{question(rng)}\n<image>"
        records.append(
            {
                "id": i if i % 3 == 0 else f"{name}-{i}",
                "image": f"{name}{i}.png",
                "conversations": [{"from": "human", "value": first}, {"from": "gpt", "value": answer(rng)}],
            }
        )
    return records


def make_extras(sft_root: Path, docmatix: Path, n: int = 4) -> dict[str, int]:
    """Every source of idefics3_sft_extras with ``n`` rows (Docmatix: ``n`` multi-page documents)."""
    rng = random.Random(11)
    _jsonl(
        sft_root / "sharegpt4o" / "annotations" / "gpt4o.jsonl", _llava(sft_root / "sharegpt4o", "s", n, 2_000_000, rng)
    )
    _json(sft_root / "geo170k" / "qa_tuning.json", _llava(sft_root / "geo170k", "g", n, 2_100_000, rng))
    for k, name in enumerate(("iiw400", "lnqa", "cord_v2")):
        write_cauldron_parquet(sft_root / name / "train-00000-of-00001-x.parquet", _rows(rng, 2_200_000 + 1000 * k, n))
    write_cauldron_parquet(
        docmatix / "images" / "train-00000-of-00001-x.parquet", _rows(rng, 2_300_000, n, images=2, turns=5)
    )

    def qa() -> tuple[str, str]:
        return question(rng), answer(rng)

    hermes = [
        {
            "conversations": [
                {"from": "system", "value": "You are helpful."},
                {"from": "human", "value": q},
                {"from": "gpt", "value": a},
            ]
        }
        for q, a in (qa() for _ in range(n))
    ]
    _json(sft_root / "openhermes" / "openhermes2_5.json", hermes)
    _json(
        sft_root / "metamathqa" / "MetaMathQA-395K.json",
        [dict(zip(("query", "response"), qa(), strict=True)) | {"type": "GSM"} for _ in range(n)],
    )
    _jsonl(
        sft_root / "atlas_math_sets" / "part-0.jsonl",
        [dict(zip(("instruction", "output"), qa(), strict=True)) for _ in range(n)],
    )
    _json(
        sft_root / "mathinstruct" / "MathInstruct.json",
        [dict(zip(("instruction", "output"), qa(), strict=True)) for _ in range(n)],
    )
    _jsonl(
        sft_root / "orca_math" / "train.jsonl", [dict(zip(("question", "answer"), qa(), strict=True)) for _ in range(n)]
    )
    _json(
        sft_root / "goat" / "dataset.json",
        [dict(zip(("instruction", "output"), qa(), strict=True)) | {"input": ""} for _ in range(n)],
    )
    _jsonl(
        sft_root / "lima" / "train.jsonl", [{"conversations": list(qa()), "source": "stackexchange"} for _ in range(n)]
    )
    _jsonl(
        sft_root / "dolly" / "databricks-dolly-15k.jsonl",
        [
            dict(zip(("instruction", "response"), qa(), strict=True)) | {"context": "", "category": "open_qa"}
            for _ in range(n)
        ],
    )
    _jsonl(
        sft_root / "camel_ai_math" / "math.jsonl",
        [dict(zip(("message_1", "message_2"), qa(), strict=True)) for _ in range(n)],
    )
    return {name: n for name in EXTRAS}


def make_all(root: Path) -> dict[str, Any]:
    benchmarks = make_benchmarks(root / "benchmarks")
    cauldron = make_cauldron_inputs(root / "the_cauldron", benchmarks)
    extras = make_extras(root / "sft", root / "docmatix")
    return {
        "vars": {
            "cauldron": root / "the_cauldron",
            "benchmarks": root / "benchmarks",
            "sft_root": root / "sft",
            "docmatix": root / "docmatix",
        },
        "cauldron": cauldron,
        "extras": extras,
    }
