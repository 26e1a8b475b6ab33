"""Shared pieces of the recipe models: the strict base model, name and path types, and the checks several
models use."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

NAME_MAX = 100
# json_schema_extra of a setting that changes how a build runs, never what it produces (left out of its identity)
NOT_IDENTITY: JsonDict = {"identity": False}
# A field added after recipes were first hashed: left out of the recipe's identity and its dump while it holds
# its default, so recipes that do not use it keep the hash (and the dataset.json) they always had.
WHEN_SET: JsonDict = {"identity": "when_set"}
# Where a build goes, never what it is (object storage options): left out of its identity and of the recipe that
# dataset.json records, so a build is byte-identical wherever it is stored.
NOT_RECORDED: JsonDict = {"identity": False, "recorded": False}
"""Longest name (recipe, output, source, step, benchmark): names become parts of file names (shard prefixes,
subset indexes, step files), and a file name has at most 255 bytes."""

NAME_PATTERN = r"^[A-Za-z0-9_\-]+$"
DOTTED_NAME_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$"  # may hold dots, never start with one ('.', '..')


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _file_name_safe(value: str) -> str:
    if value in (".", "..") or "/" in value or "\\" in value or not value.isprintable():
        raise ValueError("a name is part of file names: no '/', '\\', control characters, and not '.' or '..'")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty path; give a file, a directory or a glob")
    return value


Label = Annotated[str, Field(min_length=1, max_length=NAME_MAX), AfterValidator(_file_name_safe)]
"""A free-form name that becomes part of file names (step labels)."""

PathStr = Annotated[str, AfterValidator(_not_blank)]
"""A filesystem path (or glob, or hub id) given in a recipe: never empty or blank (that would mean the
working directory, silently)."""


def _check_unique(what: str, names: list[str]) -> None:
    dup = sorted(n for n, count in Counter(names).items() if count > 1)
    if dup:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")


def _check_bounds(low_name: str, low: int, high_name: str, high: int | None) -> None:
    if high is not None and low > high:
        raise ValueError(f"{low_name} ({low}) is greater than {high_name} ({high}); nothing could pass")


class StepBase(_Strict):
    name: Label | None = Field(None, description="Label in the accounting (defaults to the step type).")

    def score_names(self, label: str) -> list[str]:
        """The sidecar scores this step writes, given its accounting label (a recipe checks what reads them)."""
        return []


class GlobalStepBase(StepBase):
    """The config of a step over the whole dataset: it runs after every record step, so it comes last."""
