"""The record steps of a recipe as instances, in order; global steps run in the driver
(``curation.build.global_steps``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation.recipe import step_label
from curation.steps.contract import GlobalStep, RecordStep, StepContext, step_class


def build_steps(
    configs: list[Any],
    work: Path,
    tokenizer: tuple[str, str | None] = ("regex", None),
    models: Mapping[str, Any] | None = None,
) -> list[tuple[str, RecordStep]]:
    """(label, step) for the record and batched steps of ``configs``, in order, each given its context."""
    out = []
    for i, cfg in enumerate(configs):
        cls = step_class(cfg)
        if issubclass(cls, RecordStep):
            label = step_label(configs, i)
            out.append((label, cls(cfg, StepContext(label, work, tokenizer, models or {}))))
    return out


def is_global(cfg: Any) -> bool:
    return issubclass(step_class(cfg), GlobalStep)
