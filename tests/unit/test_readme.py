"""The README and docs/ stay true: the test command is exactly what .ci/run runs, the demo command is there,
recipe examples validate, relative links resolve, and the README stays short."""

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


def _docs() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_recipe_examples_validate():
    """Every complete recipe in the README and in docs/*.md (a yaml block starting with `kind:`) is a valid
    recipe, and together they show a build, a mixture and a selection recipe."""
    import re

    from curation.recipe import load_yaml, validate_recipe

    kinds = set()
    for doc in _docs():
        blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
        for block in (b for b in blocks if b.startswith("kind:")):
            name = str(doc.relative_to(ROOT))
            kinds.add(load_yaml(block)["kind"])
            validate_recipe(load_yaml(block), name)
    assert {"build", "mixture", "selection"} <= kinds, kinds


def test_readme_and_docs_links_point_to_files_that_exist():
    """Every relative markdown link in README.md and docs/*.md names a file or folder of the repository."""
    import re

    broken = []
    for doc in _docs():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor in the same page
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT.resolve()) or not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_readme_stays_short():
    """The README is what a newcomer reads in five minutes; the rest lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220
