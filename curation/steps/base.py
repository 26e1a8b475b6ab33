"""Turn recipe step configs into callables. Global steps (dedup) are run by the runner, not here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.recipe import GLOBAL_STEPS, step_label
from curation.sample import Sample

# A record step returns the (maybe changed) sample, or a drop reason.
RecordStep = Callable[[Sample], "Sample | str"]


def build_steps(configs: list[Any]) -> list[tuple[str, RecordStep]]:
    from curation.steps.convert import PairToSft
    from curation.steps.decontaminate import Decontaminate
    from curation.steps.image import ImageDecode, ImageSize
    from curation.steps.pdf import PdfToTranscription
    from curation.steps.qa import QaFilter
    from curation.steps.text import TextLength

    factories = {
        "text_length": TextLength,
        "image_decode": ImageDecode,
        "image_size": ImageSize,
        "pair_to_sft": PairToSft,
        "pdf_to_transcription": PdfToTranscription,
        "qa_filter": QaFilter,
        "decontaminate": Decontaminate,
    }
    out = []
    for i, cfg in enumerate(configs):
        if cfg.step in GLOBAL_STEPS:
            continue
        out.append((step_label(configs, i), factories[cfg.step](cfg)))
    return out
