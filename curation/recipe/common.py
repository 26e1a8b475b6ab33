"""Shared pieces of the recipe models: the strict base model and the checks several models use."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_unique(what: str, names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")


def _check_bounds(low_name: str, low: int, high_name: str, high: int | None) -> None:
    if high is not None and low > high:
        raise ValueError(f"{low_name} ({low}) is greater than {high_name} ({high}); nothing could pass")
