"""Individual Select (Rethinking VLMs, section 3.3): per category, one trial per candidate on baseline +
candidate; a candidate the decision rule accepts (:mod:`curation.selection.decide`: the paper's tolerance on
the mean score delta, or a bootstrap interval over items and seeds) joins the pool; the pool merges into the
baseline, which is trained again and moves on to the next category. Undecided candidates (interval rule) get
another seed of both trials, up to ``max_seeds``. Optionally a final trial on the baseline plus every
candidate (the paper's Table 5 comparison).

Every trial goes through the trial engine: content-hashed ids, cached results, retries, resumable.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.recipe import Component, SelectionRecipe
from curation.selection.contamination import ContaminationCheck, merge_findings
from curation.selection.decide import Comparison, SeedRun, compare, verdict
from curation.selection.items import ITEMS_NAME, read_items
from curation.selection.trials import MIXTURE_NAME, VirtualMixture, prepare_trial

EventFn = Callable[[str, dict[str, Any]], None]


@dataclass
class Evaluation:
    """A mixture's trials (one per seed) and what they gave."""

    label: str
    components: list[Component]
    trial_ids: dict[int, str] = field(default_factory=dict)  # seed -> trial
    runs: dict[int, SeedRun] = field(default_factory=dict)  # the seeds whose trial finished
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # run time of its trials (cached ones: as recorded when they ran)
    contamination: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> the check's finding

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def ok(self) -> bool:
        return bool(self.runs)

    @property
    def scores(self) -> list[float]:
        return [run.score for _, run in sorted(self.runs.items())]

    @property
    def score(self) -> float | None:
        return statistics.fmean(self.scores) if self.runs else None

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's mean over the seeds that have it."""
        return _mean_metrics(list(self.runs.values()))

    @property
    def spread(self) -> dict[str, float] | None:
        if not self.runs:
            return None
        scores = self.scores
        return {
            "min": min(scores),
            "max": max(scores),
            "stdev": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
        }


def _first_batch(mixture: Path, n: int) -> list[Any]:
    from curation.selection.data import iter_mixture

    return list(itertools.islice(iter_mixture(mixture), n))


def _mean_metrics(runs: list[SeedRun]) -> dict[str, float]:
    """Each metric's mean over the runs that have it."""
    keys = sorted(set().union(*(run.metrics for run in runs))) if runs else []
    return {k: statistics.fmean(r.metrics[k] for r in runs if k in r.metrics) for k in keys}


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
        self.trial_seconds: dict[str, float] = {}  # every trial this sweep used, once
        self.contamination = ContaminationCheck(recipe, sweep)
        self._processor: Any = None  # the reference trainer's, loaded once for the pre-flight checks

    def run(self, mixtures: list[tuple[str, list[Component]]]) -> list[Evaluation]:
        """Evaluate several mixtures on the recipe's seeds at once (their trials run concurrently as the launcher
        allows)."""
        evaluations = [Evaluation(label, list(components)) for label, components in mixtures]
        self.add_seeds(evaluations, list(self.recipe.seeds))
        return evaluations

    def preflight(self, mixture: Path, label: str) -> None:
        """The reference trainer's pre-flight check of a mixture's first batch, in the sweep itself: a model
        directory or records it cannot train on stop the sweep before the trial starts, not inside it."""
        cfg = self.recipe.trainer
        if cfg.type != "reference":
            return
        from curation.selection.families import load_processor, preflight

        if self._processor is None:
            self._processor = load_processor(cfg.model)
        try:
            preflight(cfg.model, _first_batch(mixture, cfg.batch_size), cfg.max_length, self._processor)
        except CurationError as exc:
            raise CurationError(f"trial {label}: the pre-flight check of its first batch failed: {exc}") from None

    def add_seeds(self, evaluations: list[Evaluation], seeds: list[int]) -> None:
        """Run ``seeds`` of each evaluation's mixture (all at once) and add what they give to it."""
        from curation.selection.engine import run_trials
        from curation.selection.launchers.process import TrialTask

        tasks: dict[str, TrialTask] = {}
        todo = [(ev, seed) for ev in evaluations for seed in seeds if seed not in ev.trial_ids]  # once per seed
        for ev, seed in todo:
            mixture = VirtualMixture(tuple(ev.components), self.dirs, seed, self.recipe.tokenizer)
            tid, directory = prepare_trial(
                self.trials_dir, mixture, self.trainer, self.evaluator, self.score, seed, ev.label
            )
            ev.trial_ids[seed] = tid
            ev.contamination[seed] = self.contamination.check_trial(directory, directory / MIXTURE_NAME, ev.label)
            done = self.store.get(tid)
            if done is None or done.status != "ok":  # a finished trial needs no check (and no processor)
                self.preflight(directory / MIXTURE_NAME, ev.label)
            tasks[tid] = TrialTask(tid, directory, self.gpus)
        records = run_trials(list(tasks.values()), self.launcher, self.store, self.recipe.retries, self.on_event)
        for ev, seed in todo:
            tid = ev.trial_ids[seed]
            rec = records[tid]
            self.trial_seconds[tid] = rec.seconds or 0.0
            ev.seconds += rec.seconds or 0.0
            if rec.status != "ok":
                ev.failed.append({"trial": tid, "error": rec.error, "log": str(rec.log), "attempts": rec.attempts})
                continue
            assert rec.result is not None  # mark_ok always stores one
            items = tuple(read_items(tasks[tid].directory / ITEMS_NAME))
            ev.runs[seed] = SeedRun(seed, float(rec.result["score"]), rec.result["metrics"], items)


def _next_seed(used: list[int]) -> int:
    return max(used) + 1


@dataclass(frozen=True)
class Judgement:
    """A candidate's decision, why, and the comparison it rests on."""

    decision: str  # accepted | rejected
    reason: str  # score (tolerance rule) | interval | undecided (fell back to the delta) | failed
    comparison: Comparison | None


class Judge:
    """Applies the recipe's decision rule, running extra seeds of undecided candidates (and of their baseline)."""

    def __init__(self, runner: TrialRunner, recipe: SelectionRecipe) -> None:
        self.runner = runner
        self.recipe = recipe
        self.cfg = recipe.decision
        metrics = recipe.score.metrics
        self.weights = {key: scale / len(metrics) for key, scale in metrics.items()}

    def compare(self, candidate: Evaluation, baseline: Evaluation) -> Comparison | None:
        return compare(
            candidate.runs,
            baseline.runs,
            self.weights,
            confidence=self.cfg.confidence,
            resamples=self.cfg.resamples,
            seed=f"{self.recipe.seed}/{candidate.label}",
        )

    def judge(self, base: Evaluation, candidates: list[Evaluation]) -> list[Judgement]:
        seeds = list(self.recipe.seeds)
        while True:
            comparisons = [self.compare(ev, base) if ev.ok else None for ev in candidates]
            undecided = [
                ev for ev, cmp in zip(candidates, comparisons, strict=True) if cmp is not None and self._open(cmp)
            ]
            if not undecided or len(seeds) >= self.cfg.max_seeds:
                break
            seeds.append(_next_seed(seeds))
            self.runner.add_seeds([base, *undecided], seeds[-1:])
        return [self._judgement(cmp) for cmp in comparisons]

    def _open(self, cmp: Comparison) -> bool:
        """Whether the rule cannot decide yet: an interval straddling -tolerance, or fewer seeds than
        ``min_seeds`` (an interval from one seed holds the item noise only, not the seed-to-seed noise)."""
        if self.cfg.rule != "interval":
            return False
        return len(cmp.seeds) < self.cfg.min_seeds or verdict("interval", self.cfg.tolerance, cmp) == "undecided"

    def _judgement(self, cmp: Comparison | None) -> Judgement:
        if cmp is None:  # no seed on which both the candidate's and the baseline's trials finished
            return Judgement("rejected", "failed", None)
        said = verdict(self.cfg.rule, self.cfg.tolerance, cmp)
        if self._open(cmp):
            said = verdict("tolerance", self.cfg.tolerance, cmp)
            return Judgement("accepted" if said == "accept" else "rejected", "undecided", cmp)
        reason = "score" if self.cfg.rule == "tolerance" else "interval"
        return Judgement("accepted" if said == "accept" else "rejected", reason, cmp)


def individual_select(runner: TrialRunner, recipe: SelectionRecipe) -> dict[str, Any]:
    """The algorithm; returns the report document (what report.json holds)."""
    judge = Judge(runner, recipe)
    baseline = list(recipe.baseline.components)
    (base,) = runner.run([("baseline", baseline)])
    if not base.ok:
        raise CurationError(f"the baseline trial failed ({base.failed[0]['error']}); see {base.failed[0]['log']}")
    progression = [_step("baseline", base)]
    categories = []
    for category in recipe.categories:
        candidates = runner.run(
            [(f"{category.name}/{c.name}", baseline + list(c.components)) for c in category.candidates]
        )
        judgements = judge.judge(base, candidates)
        rows = [
            _candidate_row(cand.name, ev, base, j, runner.gpus)
            for cand, ev, j in zip(category.candidates, candidates, judgements, strict=True)
        ]
        accepted = [c for c, j in zip(category.candidates, judgements, strict=True) if j.decision == "accepted"]
        entry = {
            "name": category.name,
            "baseline_score": base.score,
            "baseline_seeds": sorted(base.runs),
            "baseline_trial_seconds": round(base.seconds, 3),
            "baseline_contamination": merge_findings(list(base.contamination.values())),
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
        progression.append(_step(category.name, base))
    seconds = sum(runner.trial_seconds.values())
    doc: dict[str, Any] = {
        "name": recipe.name,
        "tolerance": recipe.decision.tolerance,
        "decision": recipe.decision.model_dump(mode="json"),
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
        seconds = sum(runner.trial_seconds.values())
        doc["all_candidates"] = {"score": allc.score, "metrics": allc.metrics, "selected_score": base.score,
                                 "failed": allc.failed}  # fmt: skip
    doc["trials"] = len(runner.trial_seconds)
    doc["trial_seconds"] = round(seconds, 3)
    doc["gpu_seconds"] = round(seconds * runner.gpus, 3)
    return doc


def _step(name: str, ev: Evaluation) -> dict[str, Any]:
    return {"step": name, "score": ev.score, "components": ev.names, "metrics": ev.metrics}


def _candidate_row(name: str, ev: Evaluation, base: Evaluation, j: Judgement, gpus: int) -> dict[str, Any]:
    cmp = j.comparison
    seeds = sorted(ev.runs) if cmp is None else list(cmp.seeds)  # deltas on the seeds both sides ran
    base_metrics = _mean_metrics([base.runs[s] for s in seeds if s in base.runs])
    return {
        "name": name,
        "score": ev.score,
        "baseline_score": base.score if cmp is None else statistics.fmean(base.runs[s].score for s in seeds),
        "delta": None if cmp is None else cmp.delta,
        "ci_low": None if cmp is None else cmp.ci_low,
        "ci_high": None if cmp is None else cmp.ci_high,
        "decision": j.decision,
        "reason": j.reason,
        "undecided": j.reason == "undecided",
        **({} if cmp is None else {k: v for k, v in cmp.as_dict().items() if k not in ("delta", "ci_low", "ci_high")}),
        "spread": ev.spread,
        "metrics": ev.metrics,
        "metric_deltas": {
            k: v - base_metrics[k]
            for k, v in _mean_metrics([ev.runs[s] for s in seeds if s in ev.runs]).items()
            if k in base_metrics
        },
        "trials": [ev.trial_ids[s] for s in sorted(ev.trial_ids)],
        "trial_seconds": round(ev.seconds, 3),
        "gpu_seconds": round(ev.seconds * gpus, 3),
        "contamination": merge_findings(list(ev.contamination.values())),
        "failed": ev.failed,
    }
