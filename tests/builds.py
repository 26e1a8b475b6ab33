"""Build inputs and recipes for runner/CLI tests: the demo's real-layout inputs with planted defects."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml

from curation.cli.demo import make_demo_inputs

CLI = [sys.executable, "-m", "curation.cli"]


def demo_recipe(inputs: Path, **changes) -> dict:
    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "demo.yaml").read_text())
    recipe["sources"][0]["path"] = str(inputs / "captions.jsonl")
    recipe["sources"][0]["image_root"] = str(inputs / "images")
    recipe["sources"][1]["path"] = str(inputs / "conversations.parquet")
    for dotted, value in changes.items():
        node = recipe
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        node[parts[-1]] = value
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def make_inputs(root: Path, n_captions: int = 400, n_conversations: int = 120) -> dict[str, int]:
    return make_demo_inputs(root, n_captions=n_captions, n_conversations=n_conversations)


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file of a build, except run logs (timestamps live there only), sub-builds' included."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if p.is_file() and "_logs" not in rel.parts:
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
