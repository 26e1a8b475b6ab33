"""A mixture's datasets: existing builds (``path``) or build recipes built first into
``<out>/_datasets/<alias>`` (resumable like any build)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from curation.build.output_dir import DATASETS, OutputDir
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import DatasetRef, load_recipe, recipe_hash
from shards.manifest import MANIFEST_NAME


class HasDatasets(Protocol):
    """A recipe naming datasets (a mixture, a selection sweep, an ablation's trial configuration)."""

    @property
    def datasets(self) -> dict[str, DatasetRef]: ...


def resolve_datasets(
    recipe: HasDatasets,
    out: Path,
    workers: int | None,
    progress: bool,
    executor: str = "local",
    address: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """The directory of each dataset: given paths as they are; recipes and inline builds built (or resumed)
    under ``out/_datasets/`` with the given executor. A sub-build of another recipe version there is replaced
    only with ``overwrite``, as any build is."""

    dirs: dict[str, Path] = {}
    for alias, ref in recipe.datasets.items():
        if ref.path is not None:
            path = Path(ref.path)
            if not (path / MANIFEST_NAME).is_file():
                raise CurationError(f"datasets.{alias}.path: {path} is not a built dataset (no {MANIFEST_NAME})")
            dirs[alias] = path
            continue
        assert ref.build is not None or ref.recipe is not None  # DatasetRef holds exactly one of path, recipe, build
        sub = ref.build if ref.build is not None else load_recipe(str(ref.recipe), ref.set)
        if sub.kind != "build":
            raise CurationError(f"datasets.{alias}.recipe: {ref.recipe} is a {sub.kind} recipe; expected a build")
        target = out / DATASETS / alias
        if target.resolve() != out.resolve() / DATASETS / alias:  # a symlink on the way: not ours to write
            raise CurationError(
                f"datasets.{alias}: {target} resolves to {target.resolve()}, outside {out}; a mixture builds its "
                "datasets only inside its own --out"
            )
        try:  # an up-to-date sub-build is kept even with overwrite; only another version is replaced
            OutputDir(target).state(recipe_hash(sub), overwrite=False)
            replace = False
        except CurationError as exc:
            if not overwrite:
                raise CurationError(
                    f"datasets.{alias}: {exc} (remove {target} to rebuild it, or pass --overwrite to curate build)"
                ) from None
            replace = True
        build(sub, target, workers=workers, overwrite=replace, progress=progress, executor=executor, address=address)
        dirs[alias] = target
    return dirs
