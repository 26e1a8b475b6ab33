"""Steps: what a build does to samples, each class declaring what the runner needs (``contract``)."""

from curation.steps.base import build_steps, is_global, step_label
from curation.steps.contract import BatchedStep, GlobalStep, RecordStep, Step, StepContext, step_class

__all__ = [
    "BatchedStep",
    "GlobalStep",
    "RecordStep",
    "Step",
    "StepContext",
    "build_steps",
    "is_global",
    "step_class",
    "step_label",
]
