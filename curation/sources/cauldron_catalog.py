"""The SFT dataset catalog: Idefics3's Table 3 and the Cauldron's 50 configs, as data
(``recipes/catalog/table3.yaml``), loaded once and checked for consistency."""

from __future__ import annotations

import functools
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from curation.recipe import Category

CATALOG_FILE = "catalog/table3.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PaperStats(_Frozen):
    """Table 3's numbers, as printed (``answer_tokens`` is a float for PlotQA: 8478299.278)."""

    images: int
    qa_pairs: int
    answer_tokens: int | float
    mix_percent: float


class Table3Row(_Frozen):
    name: str
    title: str
    category: Category
    cauldron_config: str | None
    added_in_idefics3: bool
    paper: PaperStats


class CauldronConfig(_Frozen):
    config: str
    row: str | None
    category: Category
    table3: bool = True


class Catalog(_Frozen):
    table3: list[Table3Row]
    cauldron_configs: list[CauldronConfig]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        rows = {r.name: r for r in self.table3}
        if len(rows) != len(self.table3):
            raise ValueError("table3: duplicate row names")
        configs = [c.config for c in self.cauldron_configs]
        if len(set(configs)) != len(configs):
            raise ValueError("cauldron_configs: duplicate configs")
        for c in self.cauldron_configs:
            if c.table3 != (c.row is not None):
                raise ValueError(f"cauldron_configs.{c.config}: row must be set exactly when table3 is true")
            if c.row is None:
                continue
            row = rows.get(c.row)
            if row is None:
                raise ValueError(f"cauldron_configs.{c.config}: no Table 3 row named {c.row!r}")
            if row.cauldron_config != c.config or row.category != c.category:
                raise ValueError(f"cauldron_configs.{c.config}: disagrees with Table 3 row {c.row!r}")
        listed = {r.cauldron_config for r in self.table3 if r.cauldron_config}
        if listed - set(configs):
            raise ValueError(f"table3: cauldron_config not in cauldron_configs: {sorted(listed - set(configs))}")
        return self


@functools.cache
def load_catalog() -> Catalog:
    text = resources.files("recipes").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return Catalog.model_validate(yaml.safe_load(text))


def table3_rows() -> list[Table3Row]:
    """Every row of Table 3, in the paper's order."""
    return list(load_catalog().table3)


def table3_row(name: str) -> Table3Row | None:
    return next((r for r in load_catalog().table3 if r.name == name), None)


@functools.cache
def _config_categories() -> dict[str, str]:
    return {c.config: c.category for c in load_catalog().cauldron_configs}


def cauldron_configs() -> dict[str, str]:
    """The 50 Cauldron configs -> their Table 3 category."""
    return dict(_config_categories())


def category_of(config: str) -> str | None:
    """The category of a Cauldron config; None for anything else (Docmatix's ``images`` config included)."""
    return _config_categories().get(config)


def row_of_config(config: str) -> Table3Row | None:
    """The Table 3 row of a Cauldron config (None for vqarad, which Table 3 does not list, and non-configs)."""
    entry = next((c for c in load_catalog().cauldron_configs if c.config == config), None)
    return table3_row(entry.row) if entry is not None and entry.row else None
