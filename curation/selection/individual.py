"""Individual Select (Rethinking VLMs, section 3.3): per category, one trial per candidate on baseline +
candidate; a candidate whose score is >= the baseline's minus the tolerance joins the pool ("comparable"
counts); the pool merges into the baseline, which is trained again and moves on to the next category.
With several seeds a mixture's score is the mean (the spread is reported). Optionally a final trial on the
baseline plus every candidate (the paper's Table 5 comparison).

Every trial goes through the trial engine: content-hashed ids, cached results, retries, resumable.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe import Component, SelectionRecipe
from curation.selection.trials import VirtualMixture, prepare_trial

EventFn = Callable[[str, dict[str, Any]], None]


@dataclass
class Evaluation:
    """A mixture's trials (one per seed) and what they gave."""

    label: str
    components: list[str]
    trial_ids: list[str]
    scores: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # mean over the seeds
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.scores)

    @property
    def score(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def spread(self) -> dict[str, float] | None:
        if not self.scores:
            return None
        return {
            "min": min(self.scores),
            "max": max(self.scores),
            "stdev": statistics.pstdev(self.scores) if len(self.scores) > 1 else 0.0,
        }


class TrialRunner:
    """Turns mixtures into trials (prepared in ``<sweep>/trials``) and runs them through the engine."""

    def __init__(self, recipe: SelectionRecipe, sweep: Path, dirs: dict[str, Path], launcher, store, on_event: EventFn):
        self.recipe = recipe
        self.trials_dir = sweep / "trials"
        self.dirs = dirs
        self.launcher = launcher
        self.store = store
        self.on_event = on_event
        self.trainer = recipe.trainer.model_dump(mode="json")
        self.evaluator = recipe.evaluator.model_dump(mode="json")
        self.score = recipe.score.model_dump(mode="json")
        self.gpus = getattr(recipe.launcher, "gpus_per_trial", None) or int(
            getattr(recipe.launcher, "num_gpus", 0) or 0
        )

    def run(self, mixtures: list[tuple[str, list[Component]]]) -> list[Evaluation]:
        """Evaluate several mixtures at once (their trials run concurrently as the launcher allows)."""
        from curation.selection.engine import run_trials
        from curation.selection.launchers.process import TrialTask

        evaluations, tasks = [], {}
        for label, components in mixtures:
            ids = []
            for seed in self.recipe.seeds:
                mixture = VirtualMixture(tuple(components), self.dirs, seed, self.recipe.tokenizer)
                tid, directory = prepare_trial(
                    self.trials_dir, mixture, self.trainer, self.evaluator, self.score, seed, label
                )
                ids.append(tid)
                tasks[tid] = TrialTask(tid, directory, self.gpus)
            evaluations.append(Evaluation(label, [c.name for c in components], ids))
        records = run_trials(list(tasks.values()), self.launcher, self.store, self.recipe.retries, self.on_event)
        for ev in evaluations:
            per_seed = []
            for tid in ev.trial_ids:
                rec = records[tid]
                if rec.status == "ok":
                    assert rec.result is not None  # mark_ok always stores one
                    ev.scores.append(float(rec.result["score"]))
                    per_seed.append(rec.result["metrics"])
                else:
                    ev.failed.append({"trial": tid, "error": rec.error, "log": str(rec.log), "attempts": rec.attempts})
            if per_seed:
                keys = sorted(set().union(*per_seed))
                ev.metrics = {k: statistics.fmean(m[k] for m in per_seed if k in m) for k in keys}
        return evaluations


def individual_select(runner: TrialRunner, recipe: SelectionRecipe) -> dict[str, Any]:
    """The algorithm; returns the report document (what report.json holds)."""
    tolerance = recipe.decision.tolerance
    baseline = list(recipe.baseline.components)
    (base,) = runner.run([("baseline", baseline)])
    if not base.ok:
        raise CurationError(f"the baseline trial failed ({base.failed[0]['error']}); see {base.failed[0]['log']}")
    progression = [{"step": "baseline", "score": base.score, "components": base.components, "metrics": base.metrics}]
    categories = []
    for category in recipe.categories:
        base_score = base.score
        assert base_score is not None  # base.ok (checked where it ran)
        candidates = runner.run(
            [(f"{category.name}/{c.name}", baseline + list(c.components)) for c in category.candidates]
        )
        rows, accepted = [], []
        for cand, ev in zip(category.candidates, candidates, strict=True):
            if ev.score is None:  # not ev.ok
                decision = "rejected"
                why = "failed"
            else:
                decision = "accepted" if ev.score >= base_score - tolerance else "rejected"
                why = "score"
            if decision == "accepted":
                accepted.append(cand)
            rows.append(
                {
                    "name": cand.name,
                    "score": ev.score,
                    "baseline_score": base.score,
                    "delta": None if ev.score is None else ev.score - base_score,
                    "decision": decision,
                    "reason": why,
                    "spread": ev.spread,
                    "metrics": ev.metrics,
                    "metric_deltas": {k: v - base.metrics[k] for k, v in ev.metrics.items() if k in base.metrics},
                    "trials": ev.trial_ids,
                    "failed": ev.failed,
                }
            )
        entry = {
            "name": category.name,
            "baseline_score": base.score,
            "candidates": rows,
            "accepted": [c.name for c in accepted],
        }
        if accepted:
            baseline = baseline + [x for c in accepted for x in c.components]
            (base,) = runner.run([(f"{category.name}/merged", baseline)])
            if not base.ok:
                raise CurationError(f"the merged baseline of {category.name} failed; see {base.failed[0]['log']}")
        entry["merged_score"] = base.score
        categories.append(entry)
        progression.append(
            {"step": category.name, "score": base.score, "components": base.components, "metrics": base.metrics}
        )
    doc: dict[str, Any] = {
        "name": recipe.name,
        "tolerance": tolerance,
        "seeds": recipe.seeds,
        "categories": categories,
        "progression": progression,
        "selected_components": [c.model_dump(mode="json") for c in baseline],
    }
    if recipe.final_all_candidates:
        everything = list(recipe.baseline.components) + [
            x for cat in recipe.categories for c in cat.candidates for x in c.components
        ]
        (allc,) = runner.run([("all_candidates", everything)])
        doc["all_candidates"] = {"score": allc.score, "metrics": allc.metrics, "selected_score": base.score,
                                 "failed": allc.failed}  # fmt: skip
    return doc
