"""The README's commands stay true: the test command is exactly what .ci/run runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def _ci_command() -> str:
    lines = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln and not ln.startswith(("#", "set ", "cd ", "command -v chromium"))
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_test_command_is_the_ci_command():
    assert f"\n{_ci_command()}\n" in (ROOT / "README.md").read_text()


def test_readme_demo_command_installs_and_runs_the_demo():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -q -e . && curate demo --out demo-out" in readme


def test_readme_recipe_examples_validate():
    """Every complete recipe in the README (a yaml block starting with `kind:`) is a valid recipe."""
    import re

    from curation.recipe import load_yaml, validate_recipe

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    recipes = [b for b in blocks if b.startswith("kind:")]
    assert {load_yaml(b)["kind"] for b in recipes} == {"build", "mixture", "selection"}
    for block in recipes:
        validate_recipe(load_yaml(block), "README")
