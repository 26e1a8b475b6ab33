"""A recipe's identity (its sha256, which decides whether a build resumes) is the same in every process:
nothing in it may follow Python's per-process string hashing (a set dumped in iteration order did)."""

from __future__ import annotations

import os
import subprocess
import sys

from curation.recipe.loading import builtin_recipes

_PRINT = """
from curation.recipe import load_recipe
from curation.recipe.loading import builtin_recipes, recipe_hash
for name in sorted(builtin_recipes()):
    print(name, recipe_hash(load_recipe(name)))
"""


def test_every_builtin_recipe_hashes_the_same_whatever_the_hash_seed():
    runs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _PRINT], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(out.stdout)
    assert len(runs[0].splitlines()) == len(builtin_recipes())
    assert runs[0] == runs[1] == runs[2]


def _near_dup_recipe(**step: object) -> object:
    from curation.recipe.loading import validate_recipe

    return validate_recipe(
        {
            "name": "t",
            "sources": [{"name": "a", "reader": "jsonl", "path": "x.jsonl", "record": "sft"}],
            "steps": [{"step": "near_dup_text", **step}],
            "output": {"kind": "sft"},
        }
    )


def test_a_setting_that_only_changes_how_a_build_runs_is_not_part_of_its_identity():
    from curation.build.plan import recipe_identity
    from curation.recipe.loading import recipe_hash

    base = _near_dup_recipe()
    more_memory = _near_dup_recipe(memory_mb=4096)
    other_layout = _near_dup_recipe(bands=16, rows=8)
    assert recipe_hash(base) == recipe_hash(more_memory) != recipe_hash(other_layout)
    assert recipe_identity(base, None) == recipe_identity(more_memory, None)  # type: ignore[arg-type]
    assert "memory_mb" in base.model_dump_json()  # type: ignore[attr-defined]  # still in the recorded recipe


def test_an_lsh_layout_that_cannot_work_is_refused_with_the_fix():
    import pytest

    from curation.errors import RecipeError

    with pytest.raises(RecipeError, match=r"steps\.0: give both bands and rows"):
        _near_dup_recipe(bands=20)
    with pytest.raises(RecipeError, match=r"steps\.0: bands x rows \(20 x 9\) must be <= num_perm \(128\)"):
        _near_dup_recipe(bands=20, rows=9)
