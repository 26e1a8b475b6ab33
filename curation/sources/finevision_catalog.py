"""FineVision's subsets with their categories, as data (``recipes/catalog/finevision.yaml``), loaded once and
checked: every subset listed once, category ids unique."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOG_FILE = "catalog/finevision.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FineVisionCategory(_Frozen):
    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    title: str
    subsets: list[str]


class FineVisionCatalog(_Frozen):
    categories: list[FineVisionCategory]

    @model_validator(mode="after")
    def _each_once(self) -> FineVisionCatalog:
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise ValueError("categories: duplicate ids")
        names = [s for c in self.categories for s in c.subsets]
        repeated = sorted({s for s in names if names.count(s) > 1})
        if repeated:
            raise ValueError(f"subsets listed more than once: {repeated}")
        return self


@functools.cache
def load_finevision_catalog() -> FineVisionCatalog:
    text = resources.files("recipes").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return FineVisionCatalog.model_validate(yaml.safe_load(text))


@functools.cache
def _categories() -> dict[str, str]:
    return {s: c.id for c in load_finevision_catalog().categories for s in c.subsets}


def finevision_subsets() -> dict[str, str]:
    """Every listed FineVision subset -> its category id."""
    return dict(_categories())


def finevision_category(subset: str) -> str | None:
    """The category id of a FineVision subset; None for a subset the catalog does not list."""
    return _categories().get(subset)
