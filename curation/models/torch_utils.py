"""The few torch helpers every kind uses (torch imported on call: the package imports without it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


def spare_cores(device: str) -> bool:
    """Whether preparing images beside the forward costs the model nothing: a GPU runs it, or torch's CPU
    threads leave at least one core of this process's idle."""
    if device.startswith("cuda"):
        return True
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def unit_rows(features: Any) -> np.ndarray:
    """A (n, dim) tensor -> float32 numpy rows of unit L2 norm (normalised in float32, an all-zero row stays 0)."""
    import torch

    out = torch.nn.functional.normalize(features.float(), dim=-1)
    return out.cpu().numpy().astype(np.float32, copy=False)


def pooled(output: Any) -> Any:
    """``get_image_features``/``get_text_features`` return a tensor in transformers 4 and an output object
    whose ``pooler_output`` is the projected embedding in transformers 5."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, "pooler_output", None)
    if value is None and isinstance(output, tuple | list) and output:
        value = output[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"unexpected model output {type(output).__name__}")
    return value


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers progress bar per load: a worker loads in every process, its log stays readable."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
