"""A toy world with known answers, to prove the selection engine on a CPU in a few minutes.

Images: a coloured shape (red/green/blue circle/square/triangle) on a grey background, 32x32, drawn with
Pillow. Two skills, each measured by a benchmark: the colour ("What color is the shape?", VQA accuracy)
and the shape (multiple choice A/B/C). The baseline mixture teaches a little of the colour skill; the
candidates' effects are known by construction:

- ``color_good``: correct colour answers (helpful for the colour benchmark);
- ``color_poison``: systematically wrong colour answers (red is called green, ...): poisoned;
- ``shape_good``: correct shape names (helpful for the shape benchmark);
- ``neutral``: "Describe the image." -> "An image." (no signal for either benchmark).

``make_toy_world(root)`` writes the inputs, the build recipes of the datasets and benchmarks, a tiny
Idefics3 model (built offline) and ``selection.yaml``; ``curate demo --select`` builds and runs it.

``make_graded_world(root)`` is the same world with one category of five colour candidates of graded effect
(strongly helpful, slightly helpful, neutral, slightly harmful, poisoned; ``GRADED_TRUTH`` says which should
be accepted): what :mod:`curation.selection.decision_accuracy` measures the decision rules on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220)}
SHAPES = ("circle", "square", "triangle")
POISON = {"red": "green", "green": "blue", "blue": "red"}
LETTERS = {"circle": "A", "square": "B", "triangle": "C"}
SIZE = 32


def draw(color: str, shape: str, rng: random.Random) -> Image.Image:
    grey = rng.randint(150, 200)
    im = Image.new("RGB", (SIZE, SIZE), (grey, grey, grey))
    d = ImageDraw.Draw(im)
    r = rng.randint(9, 13)
    cx, cy = rng.randint(r + 1, SIZE - r - 2), rng.randint(r + 1, SIZE - r - 2)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def _write_set(root: Path, name: str, n: int, seed: int, make_row) -> Path:
    """A jsonl sft source with its image folder; ``make_row(color, shape, image_file, i)`` -> row."""
    rng = random.Random(seed)
    folder = root / "inputs" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        file = f"{i:04d}.png"
        draw(color, shape, rng).save(folder / file)
        rows.append(make_row(color, shape, file, i))
    path = root / "inputs" / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _qa(question: str, answer: str, file: str, i: int, **meta: Any) -> dict[str, Any]:
    return {"id": f"{i:04d}", "images": [file], "turns": [{"user": question, "assistant": answer}], **meta}


COLOR_Q = "What color is the shape?"
SHAPE_Q = "What shape is this?\nA. circle\nB. square\nC. triangle"

TRAINING_SETS = {
    "base": (
        48,
        lambda c, s, f, i: _qa(COLOR_Q, c, f, i) if i % 3 == 0 else _qa("Describe the image.", "An image.", f, i),
    ),
    "color_good": (96, lambda c, s, f, i: _qa(COLOR_Q, c, f, i)),
    "color_poison": (96, lambda c, s, f, i: _qa(COLOR_Q, POISON[c], f, i)),
    "shape_good": (96, lambda c, s, f, i: _qa(SHAPE_Q, s, f, i)),
    "neutral": (96, lambda c, s, f, i: _qa("Describe the image.", "An image.", f, i)),
}
GRADED_SETS = {  # a quarter of the rows carry the signal, diluted with rows that carry none
    "color_slight": (
        96,
        lambda c, s, f, i: _qa(COLOR_Q, c, f, i) if i % 4 == 0 else _qa("Describe the image.", "An image.", f, i),
    ),
    "color_slight_harm": (
        96,
        lambda c, s, f, i: (
            _qa(COLOR_Q, POISON[c], f, i) if i % 4 == 0 else _qa("Describe the image.", "An image.", f, i)
        ),
    ),
}
GRADED_TRUTH = {  # candidate -> the right decision (neutral is "comparable": accepted within the tolerance)
    "color_good": "accepted",
    "color_slight": "accepted",
    "neutral": "accepted",
    "color_slight_harm": "rejected",
    "color_poison": "rejected",
}
BENCHMARKS = {
    "color": (30, lambda c, s, f, i: _qa(COLOR_Q, c, f, i, metric="vqa_accuracy", references=[c] * 3)),
    "shape": (
        30,
        lambda c, s, f, i: _qa(
            SHAPE_Q, LETTERS[s], f, i, metric="multiple_choice", references=[LETTERS[s]],
            options={"A": "circle", "B": "square", "C": "triangle"},
        ),
    ),
}  # fmt: skip


def _build_recipe(name: str, jsonl: Path) -> dict[str, Any]:
    return {
        "kind": "build",
        "name": name,
        "sources": [
            {
                "name": name,
                "reader": "jsonl",
                "record": "sft",
                "path": str(jsonl),
                "image_root": str(jsonl.parent / name),
                "fields": {"key": "id"},
                "keep_extra": True,
            }
        ],
        "output": {"kind": "sft"},
    }


def _write_world(root: Path, seed: int, benchmark_rows: int, graded: bool) -> tuple[dict[str, Any], Path]:
    """Inputs, build recipes and the tiny model under ``root``; (datasets of the selection recipe, model)."""
    from curation.selection.tiny_vlm import build_tiny_idefics3

    root.mkdir(parents=True, exist_ok=True)
    recipes = root / "recipes"
    recipes.mkdir(exist_ok=True)
    datasets = {}
    for offset, (name, (n, row)) in enumerate({**TRAINING_SETS, **BENCHMARKS, **GRADED_SETS}.items()):
        if name in GRADED_SETS and not graded:
            continue
        jsonl = _write_set(root, name, benchmark_rows if name in BENCHMARKS else n, seed * 1000 + offset, row)
        path = recipes / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_build_recipe(name, jsonl), sort_keys=False))
        if name not in BENCHMARKS:
            datasets[name] = {"recipe": str(path)}
    return datasets, build_tiny_idefics3(root / "model", seed=seed)


def _comp(name: str) -> dict[str, Any]:
    return {"name": name, "dataset": name, "target": {"epochs": 1}}


def _candidate(name: str) -> dict[str, Any]:
    return {"name": name, "components": [_comp(name)]}


def _selection(root: Path, seed: int, steps: int, datasets: dict[str, Any], model: Path) -> dict[str, Any]:
    return {
        "kind": "selection",
        "name": "toy_select",
        "description": "The toy world: known helpful, neutral and poisoned candidates.",
        "seed": seed,
        "datasets": datasets,
        "baseline": {"components": [_comp("base")]},
        "categories": [
            {"name": "color", "candidates": [_candidate("color_good"), _candidate("color_poison")]},
            {"name": "shape", "candidates": [_candidate("shape_good"), _candidate("neutral")]},
        ],
        "trainer": {
            "type": "reference",
            "model": str(model),
            "peft": {"method": "none"},
            "epochs": 8,
            "max_steps": steps,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.05,
            "scheduler": "cosine",
            "max_length": 64,
            "device": "cpu",
        },
        "evaluator": {
            "type": "builtin",
            "benchmarks": [{"name": b, "shards": str(root / "benchmarks" / b)} for b in BENCHMARKS],
            "max_new_tokens": 4,
            "batch_size": 32,
        },
        "score": {"metrics": {"color/accuracy": 1.0, "shape/accuracy": 1.0}},
        "decision": {"tolerance": 2.0},
        # the benchmarks are drawn from the training sets' own generator: 32-pixel shapes whose perceptual
        # hashes coincide and the same question templates, so every trial would be flagged by construction
        "contamination": {"action": "off"},
        "seeds": [0],
        "launcher": {"type": "local", "max_concurrent": 1},
        "retries": 1,
        "final_all_candidates": True,
    }


def make_toy_world(root: Path, seed: int = 0, steps: int = 400) -> Path:
    """Write everything under ``root``; returns the selection recipe's path."""
    datasets, model = _write_world(root, seed, benchmark_rows=30, graded=False)
    selection = _selection(root, seed, steps, datasets, model)
    path = root / "selection.yaml"
    path.write_text(yaml.safe_dump(selection, sort_keys=False))
    return path


def make_graded_world(root: Path, seed: int = 0, steps: int = 400, benchmark_rows: int = 60) -> Path:
    """The toy world with one category of the five graded colour candidates of ``GRADED_TRUTH``, scored on
    the colour benchmark; returns the selection recipe's path (tolerance rule, seed 0: change ``decision``
    and ``seeds`` to compare rules; the trials of one world are shared through its sweep's cache)."""
    datasets, model = _write_world(root, seed, benchmark_rows, graded=True)
    selection = _selection(root, seed, steps, {k: datasets[k] for k in ("base", *GRADED_TRUTH)}, model)
    selection["name"] = "toy_graded"
    selection["description"] = "The toy world with graded candidates: decision accuracy."
    selection["categories"] = [{"name": "color", "candidates": [_candidate(n) for n in GRADED_TRUTH]}]
    selection["score"] = {"metrics": {"color/accuracy": 1.0}}
    selection["final_all_candidates"] = False
    path = root / "selection.yaml"
    path.write_text(yaml.safe_dump(selection, sort_keys=False))
    return path


def build_benchmarks(root: Path, workers: int = 1) -> None:
    """The evaluation sets are datasets too (their records carry the references in meta)."""
    from curation.build.runner import build
    from curation.recipe import load_recipe

    for name in BENCHMARKS:
        build(load_recipe(str(root / "recipes" / f"{name}.yaml")), root / "benchmarks" / name, workers=workers,
              progress=False)  # fmt: skip
