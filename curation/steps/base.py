"""Turn recipe step configs into callables. Global steps (dedup) are run by the runner, not here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from curation.recipe import GLOBAL_STEPS, step_label
from curation.sample import Sample

# A record step returns the (maybe changed) sample, or a drop reason.
RecordStep = Callable[[Sample], "Sample | str"]

# step type -> "module:class" (imported only when a recipe uses it)
RECORD_STEPS = {
    "text_length": "curation.steps.text:TextLength",
    "image_decode": "curation.steps.image:ImageDecode",
    "image_size": "curation.steps.image:ImageSize",
    "pair_to_sft": "curation.steps.convert:PairToSft",
    "pdf_to_transcription": "curation.steps.pdf:PdfToTranscription",
    "qa_filter": "curation.steps.qa:QaFilter",
    "decontaminate": "curation.steps.decontaminate:Decontaminate",
    "docmatix_generate": "curation.steps.docmatix:DocmatixGenerate",
}


def record_step_class(step_type: str) -> type:
    module, name = RECORD_STEPS[step_type].split(":")
    return getattr(importlib.import_module(module), name)


def build_steps(configs: list[Any], context: dict[str, Any] | None = None) -> list[tuple[str, RecordStep]]:
    """Record steps of a recipe, in order; ``context`` carries build-wide inputs (e.g. the work directory
    where prepared indexes live) to steps that accept it."""
    out = []
    for i, cfg in enumerate(configs):
        if cfg.step in GLOBAL_STEPS:
            continue
        cls = record_step_class(cfg.step)
        label = step_label(configs, i)
        step = cls(cfg, {**(context or {}), "label": label}) if getattr(cls, "takes_context", False) else cls(cfg)
        out.append((label, step))
    return out
