"""A mixture's datasets: existing builds (``path``: a directory, or a build in a bucket read through the local
mirror) or build recipes built first into ``<out>/_datasets/<alias>`` (resumable like any build)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from curation.build.output_dir import DATASETS, OutputDir
from curation.build.plan import recipe_identity
from curation.build.runner import build
from curation.errors import CurationError, RecipeError
from curation.recipe import BuildRecipe, DatasetRef, load_recipe
from curation.storage.inputs import check_inputs as check_url_inputs
from curation.storage.urls import is_url
from shards.manifest import MANIFEST_NAME

# Builds one sub-build: (alias, its recipe, its directory, replace an older version of it). The default runs the
# local build; a mixture into a bucket also publishes it (``curation.storage.publish``).
BuildOne = Callable[[str, BuildRecipe, Path, bool], Any]


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
    build_one: BuildOne | None = None,
) -> dict[str, Path]:
    """The directory of each dataset: given paths as they are, a build in a bucket (``s3://...``) as its local
    mirror (its shards, checked against its manifest); recipes and inline builds built (or resumed) under
    ``out/_datasets/`` with the given executor (or by ``build_one``). A sub-build of another recipe version there
    is replaced only with ``overwrite``, as any build is."""

    dirs: dict[str, Path] = {}
    for alias, ref in recipe.datasets.items():
        if ref.path is not None and is_url(ref.path):
            from curation.storage.mirror import mirror

            dirs[alias] = mirror(ref.path, "shards", what=f"datasets.{alias}.path", options=_storage(recipe))
            continue
        if ref.path is not None:
            path = Path(ref.path)
            if not (path / MANIFEST_NAME).is_file():
                raise CurationError(f"datasets.{alias}.path: {path} is not a built dataset (no {MANIFEST_NAME})")
            dirs[alias] = path
            continue
        assert ref.build is not None or ref.recipe is not None  # DatasetRef holds exactly one of path, recipe, build
        if ref.recipe is not None and is_url(str(ref.recipe)):
            raise RecipeError(
                f"datasets.{alias}.recipe: {ref.recipe}: a recipe file is read from a local path (its relative "
                "paths are relative to its folder); copy it first, or give the build inline (datasets.<name>.build)"
            )
        sub = ref.build if ref.build is not None else load_recipe(str(ref.recipe), ref.set)
        if sub.kind != "build":
            raise CurationError(f"datasets.{alias}.recipe: {ref.recipe} is a {sub.kind} recipe; expected a build")
        target = out / DATASETS / alias
        if target.resolve() != out.resolve() / DATASETS / alias:  # a symlink on the way: not ours to write
            raise CurationError(
                f"datasets.{alias}: {target} resolves to {target.resolve()}, outside {out}; a mixture builds its "
                "datasets only inside its own --out"
            )
        sub = check_url_inputs(sub)  # recipe files in a bucket copied: what the build records and identifies
        try:  # an up-to-date sub-build is kept even with overwrite; only another version is replaced
            OutputDir(target).state(recipe_identity(sub, None), overwrite=False)  # as the build records it
            replace = False
        except CurationError as exc:
            if not overwrite:
                raise CurationError(
                    f"datasets.{alias}: {exc} (remove {target} to rebuild it, or pass --overwrite to curate build)"
                ) from None
            replace = True
        if build_one is not None:
            build_one(alias, sub, target, replace)
        else:
            build(
                sub, target, workers=workers, overwrite=replace, progress=progress, executor=executor, address=address
            )
        dirs[alias] = target
    return dirs


def shown_paths(recipe: HasDatasets, dirs: dict[str, Path], out: Path | None = None) -> dict[str, str]:
    """How a record names each dataset: its URL (a build in a bucket), its path relative to ``out`` (a sub-build,
    when ``out`` is given), or its path; never the local mirror a build in a bucket was read through."""
    shown = {}
    for alias, path in dirs.items():
        ref = recipe.datasets.get(alias)
        if ref is not None and ref.path is not None and is_url(ref.path):
            shown[alias] = ref.path
        else:
            shown[alias] = str(path.relative_to(out)) if out is not None and path.is_relative_to(out) else str(path)
    return shown


def _storage(recipe: HasDatasets) -> Any:
    """The recipe's ``storage:`` options, where its kind has them (a mixture); else the environment's."""
    return getattr(recipe, "storage", None)
