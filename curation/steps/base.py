"""Turn recipe step configs into callables. Global steps (dedup) are run by the runner, not here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.recipe import GLOBAL_STEPS
from curation.sample import Sample

# A record step returns the (maybe changed) sample, or a drop reason.
RecordStep = Callable[[Sample], "Sample | str"]


def step_label(steps: list[Any], i: int) -> str:
    """Accounting label of ``steps[i]``: its name, or its type with a suffix when the type repeats."""
    step = steps[i]
    if step.name:
        return step.name
    same = [j for j, s in enumerate(steps) if s.step == step.step and not s.name]
    return step.step if len(same) == 1 else f"{step.step}#{same.index(i) + 1}"


def build_steps(configs: list[Any]) -> list[tuple[str, RecordStep]]:
    from curation.steps.convert import PairToSft
    from curation.steps.image import ImageDecode, ImageSize
    from curation.steps.text import TextLength

    factories = {
        "text_length": TextLength,
        "image_decode": ImageDecode,
        "image_size": ImageSize,
        "pair_to_sft": PairToSft,
    }
    out = []
    for i, cfg in enumerate(configs):
        if cfg.step in GLOBAL_STEPS:
            continue
        out.append((step_label(configs, i), factories[cfg.step](cfg)))
    return out
