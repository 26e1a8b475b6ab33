"""Nothing a build deletes or overwrites lies outside the output it owns, and overwriting is never implied:
mixture aliases are plain names, symlinks inside --out are never written or deleted through, and a sub-build
of another recipe version is replaced only with --overwrite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from curation.build.runner import build
from curation.errors import CurationError, RecipeError
from curation.mixture.build import build_mixture
from curation.recipe import validate_recipe
from tests.builds import tree_digest


def _inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    rows = [{"id": f"r{i}", "turns": [{"user": f"q{i}?", "assistant": f"answer {i}"}]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build_recipe(inputs: Path, name: str = "sub", min_chars: int = 1) -> dict[str, Any]:
    return {
        "kind": "build",
        "name": name,
        "sources": [{"name": "s", "reader": "jsonl", "record": "sft", "path": str(inputs), "fields": {"key": "id"}}],
        "steps": [{"step": "text_length", "field": "answers", "min_chars": min_chars}],
        "output": {"kind": "sft"},
    }


def _mixture(alias: str, build_recipe: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "mixture",
        "name": "mix",
        "datasets": {alias: {"build": build_recipe}},
        "components": [{"name": "s", "dataset": alias, "target": {"samples": 5}}],
    }


@pytest.mark.parametrize("alias", ["/abs/path", "../../elsewhere", "a/b", "..", ".hidden", "a.b", "x" * 101])
def test_a_dataset_alias_must_be_a_plain_name(tmp_path: Path, alias: str):
    with pytest.raises(RecipeError, match=r"dataset alias .* is not a plain name"):
        validate_recipe(_mixture(alias, _build_recipe(_inputs(tmp_path))))


@pytest.mark.parametrize("link", ["_datasets", "_datasets/sub"])
def test_a_symlinked_datasets_folder_is_never_built_into(tmp_path: Path, link: str):
    inputs = _inputs(tmp_path)
    victim = tmp_path / "victim"
    build(validate_recipe(_build_recipe(inputs, name="other")), victim / "sub", progress=False)
    before = tree_digest(victim)
    out = tmp_path / "out"
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(victim if link == "_datasets" else victim / "sub")
    with pytest.raises(CurationError, match=r"outside|holds no build"):
        build_mixture(validate_recipe(_mixture("sub", _build_recipe(inputs))), out, progress=False)
    assert tree_digest(victim) == before


def test_a_symlink_in_out_is_never_deleted_through(tmp_path: Path):
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    build(validate_recipe(_build_recipe(inputs)), out, progress=False)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    (out / "rejects").symlink_to(keep)
    with pytest.raises(CurationError, match="did not write"):
        build(validate_recipe(_build_recipe(inputs, min_chars=2)), out, overwrite=True, progress=False)
    assert (keep / "precious.txt").read_text() == "mine"


def test_a_sub_build_of_another_recipe_version_is_replaced_only_with_overwrite(tmp_path: Path):
    """A mixture killed before its manifest resumes; if the recipe file of a dataset changed meanwhile, the
    sub-build under _datasets/ is another version: an error, unless --overwrite."""
    sub_recipe = tmp_path / "sub.yaml"
    sub_recipe.write_text(json.dumps(_build_recipe(_inputs(tmp_path))))
    mixture = validate_recipe({**_mixture("sub", {}), "datasets": {"sub": {"recipe": str(sub_recipe)}}})
    out = tmp_path / "out"
    build_mixture(mixture, out, progress=False)
    rhash = json.loads((out / "dataset.json").read_text())["recipe_sha256"]
    for written_last in ("dataset.json", "README.md"):  # as a kill before the manifest leaves it
        (out / written_last).unlink()
    (out / "_work").mkdir()
    (out / "_work" / "plan.json").write_text(json.dumps({"recipe_sha256": rhash, "prefix": "mix"}))
    sub_before = tree_digest(out / "_datasets" / "sub")
    sub_recipe.write_text(json.dumps(_build_recipe(tmp_path / "in.jsonl", min_chars=2)))
    with pytest.raises(CurationError, match=r"datasets\.sub: .*--overwrite"):
        build_mixture(mixture, out, progress=False)
    assert tree_digest(out / "_datasets" / "sub") == sub_before
    build_mixture(mixture, out, overwrite=True, progress=False)
    assert tree_digest(out / "_datasets" / "sub") != sub_before


def test_overwrite_keeps_an_up_to_date_sub_build(tmp_path: Path):
    out = tmp_path / "out"
    mixture = validate_recipe(_mixture("sub", _build_recipe(_inputs(tmp_path))))
    build_mixture(mixture, out, progress=False)
    before = (out / "_datasets" / "sub" / "dataset.json").stat().st_mtime_ns
    build_mixture(mixture, out, overwrite=True, progress=False)  # the mixture is redone, its sub-build is current
    assert (out / "_datasets" / "sub" / "dataset.json").stat().st_mtime_ns == before
