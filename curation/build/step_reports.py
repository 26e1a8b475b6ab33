"""Step reports: what steps say about their work in each partition, added up over the build. The manifest
keeps what the output depends on; the run log keeps what one run did (cache hits, timings, rates)."""

from __future__ import annotations

from typing import Any

from curation.recipe import BuildRecipe, step_label
from curation.steps import RecordStep, step_class

Reports = dict[str, dict[str, Any]]  # step label -> report


def merge_reports(reports: list[Reports]) -> Reports:
    """Step reports of several partitions as one: numbers (and nested counters) added up."""

    def add(into: dict[str, Any], more: dict[str, Any]) -> None:
        for k, v in more.items():
            if isinstance(v, dict):
                add(into.setdefault(k, {}), v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                into[k] = round(into.get(k, 0) + v, 6)
            else:
                into.setdefault(k, v)

    merged: Reports = {}
    for partition in reports:
        for label, report in partition.items():
            add(merged.setdefault(label, {}), report)
    return merged


def _record_step_classes(recipe: BuildRecipe) -> dict[str, type[RecordStep]]:
    classes = {step_label(recipe.steps, i): step_class(s) for i, s in enumerate(recipe.steps)}
    return {label: cls for label, cls in classes.items() if issubclass(cls, RecordStep)}


def output_reports(recipe: BuildRecipe, reports: Reports) -> Reports:
    """The reports without the keys each step declares run-only (they describe a run, not the output)."""
    classes = _record_step_classes(recipe)
    return {
        label: {k: v for k, v in r.items() if k not in classes[label].run_only_report_keys}
        for label, r in reports.items()
    }


def run_reports(recipe: BuildRecipe, reports: Reports, seconds: float) -> Reports:
    """This run's reports, each with the rates its step class derives from it (for the run log)."""
    classes = _record_step_classes(recipe)
    out = {}
    for label, report in reports.items():
        rates = classes[label].throughput(report, seconds)
        out[label] = report if rates is None else {**report, "throughput": rates}
    return out
