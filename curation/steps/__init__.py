"""Steps: small functions of a sample returning the sample (maybe changed) or a drop reason."""

from curation.steps.base import RecordStep, build_steps, step_label

__all__ = ["RecordStep", "build_steps", "step_label"]
