"""The mixture recipe: components drawn from built datasets, each sampled to its target."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from curation.recipe.build import BuildRecipe, Tokenizer
from curation.recipe.common import NAME_MAX, NAME_PATTERN, NOT_IDENTITY, NOT_RECORDED, PathStr, _check_unique, _Strict
from curation.recipe.sources import Category
from curation.recipe.storage import Storage

# ---- mixtures -------------------------------------------------------------------------------------
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def _plain_alias(alias: str) -> str:
    if not (_ALIAS.match(alias) and len(alias) <= NAME_MAX):
        raise ValueError(
            f"dataset alias {alias[:80]!r} is not a plain name (letters, digits, _ and -, at most {NAME_MAX}): it "
            "names a folder under _datasets/ of the output, never a path"
        )
    return alias


# A dataset alias names a directory under <out>/_datasets/: a plain name, never a path.
DatasetAlias = Annotated[str, AfterValidator(_plain_alias)]


class DatasetRef(_Strict):
    """A dataset a mixture draws from: an existing build (``path``), a build recipe (a file or built-in
    name, with ``set`` overrides), or a build written inline (``build``: sources, steps, output, ...); the
    last two are built first into ``<out>/_datasets/<alias>``."""

    path: PathStr | None = Field(
        default=None, description="A dataset directory built by this toolkit, or its s3://bucket/prefix URL."
    )
    recipe: PathStr | None = Field(
        default=None, description="A build recipe file or built-in name, built before mixing."
    )
    set: list[str] = Field(default_factory=list, description="--set overrides for that recipe (dotted.path=value).")
    build: BuildRecipe | None = Field(
        default=None, description="A build recipe inline (its name defaults to the alias)."
    )

    @model_validator(mode="after")
    def _one(self) -> DatasetRef:
        if sum(x is not None for x in (self.path, self.recipe, self.build)) != 1:
            raise ValueError("give exactly one of path (a built dataset), recipe or build (to build first)")
        if self.set and self.recipe is None:
            raise ValueError("set: overrides apply to a recipe")
        return self


def name_inline_builds(data: Any) -> Any:
    """An inline ``datasets.<alias>.build`` without a name is named after its alias."""
    datasets = data.get("datasets") if isinstance(data, dict) else None
    if isinstance(datasets, dict):
        named = {
            alias: {**ref, "build": {"name": alias, **ref["build"]}}
            if isinstance(ref, dict) and isinstance(ref.get("build"), dict)
            else ref
            for alias, ref in datasets.items()
        }
        data = {**data, "datasets": named}
    return data


class Target(_Strict):
    """Exactly one: a share of the mixture's answer tokens (in percent, Table 3's `% mix`), a number of
    samples, or a number of epochs over the component's samples."""

    answer_share: float | None = Field(
        default=None, gt=0.0, le=100.0, description="Percent of the mixture's answer tokens."
    )
    samples: int | None = Field(default=None, ge=0)
    epochs: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [k for k in ("answer_share", "samples", "epochs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of answer_share, samples or epochs (got {', '.join(given) or 'none'})")
        return self

    def kind(self) -> str:
        return next(k for k in ("answer_share", "samples", "epochs") if getattr(self, k) is not None)


class Component(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9\-]+(_[A-Za-z0-9\-]+)*$", max_length=NAME_MAX, description="No double underscores."
    )
    dataset: str = Field(description="An alias under datasets.")
    sources: list[str] | None = Field(default=None, description="Sources of that dataset [default: [name]].")
    category: Category | None = Field(default=None, description="[default: the category the dataset records]")
    target: Target

    def source_names(self) -> list[str]:
        return self.sources or [self.name]


class MixtureOutput(_Strict):
    name: str | None = Field(
        default=None, pattern=NAME_PATTERN, max_length=NAME_MAX, description="Shard prefix (recipe name)."
    )
    max_samples_per_shard: int = Field(default=10_000, ge=1)
    max_bytes_per_shard: int = Field(default=1 << 30, ge=1024)
    bucket_bytes: int = Field(
        default=256 << 20, ge=1 << 16, description="The out-of-core shuffle holds one bucket of this size in memory."
    )


class MixtureRecipe(_Strict):
    """Components drawn from built datasets, each up- or down-sampled to its target (whole-sample repeats,
    seeded subsampling), shuffled globally (seeded, out of core) into mixture shards."""

    kind: Literal["mixture"]
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    description: str = ""
    seed: int = 0
    vars: dict[str, str | int | float] = Field(default_factory=dict, json_schema_extra=NOT_IDENTITY)  # substituted
    datasets: Annotated[dict[DatasetAlias, DatasetRef], Field(min_length=1)]
    components: Annotated[list[Component], Field(min_length=1)]
    total_answer_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Size of a mixture whose targets are all shares [default: the answer tokens available].",
    )
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    output: MixtureOutput = Field(default_factory=MixtureOutput)
    storage: Storage | None = Field(
        default=None,
        description="Object storage options for --out s3://... and datasets in a bucket (path: s3://...); never "
        "credentials. Not part of the mixture's identity, nor recorded in dataset.json.",
        json_schema_extra=NOT_RECORDED,
    )

    @model_validator(mode="before")
    @classmethod
    def _inline_build_names(cls, data: Any) -> Any:
        return name_inline_builds(data)

    @model_validator(mode="after")
    def _consistent(self) -> MixtureRecipe:
        _check_unique("component", [c.name for c in self.components])
        for i, c in enumerate(self.components):
            if c.dataset not in self.datasets:
                hint = difflib.get_close_matches(c.dataset, list(self.datasets), n=1)
                raise ValueError(
                    f"components.{i}.dataset: no dataset {c.dataset!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else f"; datasets: {', '.join(self.datasets)}")
                )
        shares = [c.target.answer_share for c in self.components if c.target.answer_share is not None]
        fixed = len(shares) < len(self.components)
        if not fixed and not 95.0 <= sum(shares) <= 105.0:
            raise ValueError(
                f"the answer_share targets add up to {sum(shares):.2f}%; they should add up to 100% (they are "
                "read as proportions of their sum, so printed tables that round a little, e.g. 100.77%, are fine)"
            )
        if fixed and shares and sum(shares) >= 100.0:
            raise ValueError("answer_share targets take 100%, leaving nothing for the samples/epochs components")
        if fixed and self.total_answer_tokens is not None:
            raise ValueError(
                "total_answer_tokens only applies when every target is an answer_share (otherwise the samples/epochs "
                "components fix the size)"
            )
        return self

    def shard_prefix(self) -> str:
        return self.output.name or self.name
