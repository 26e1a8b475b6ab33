"""Paired decisions: the bootstrap interval of a score delta over items and seeds, and the decision rules."""

from __future__ import annotations

import numpy as np
import pytest

from curation.selection.decide import Comparison, SeedRun, compare, verdict
from curation.selection.items import ItemScore


def _run(seed: int, correct: np.ndarray, bench: str = "vqa", extra: dict[str, float] | None = None) -> SeedRun:
    """A trial scoring ``bench/accuracy`` = 100 x mean(correct), with its per-item values."""
    items = tuple(ItemScore(bench, f"q{i}", "accuracy", 100.0 * float(c)) for i, c in enumerate(correct))
    metrics = {f"{bench}/accuracy": 100.0 * float(np.mean(correct)), **(extra or {})}
    return SeedRun(seed, metrics[f"{bench}/accuracy"], metrics, items)


W = {"vqa/accuracy": 1.0}


def test_identical_trials_give_a_zero_delta_and_a_zero_width_interval() -> None:
    correct = np.array([1, 0, 1, 1, 0] * 20)
    cmp = compare({0: _run(0, correct)}, {0: _run(0, correct)}, W, seed="x")
    assert cmp is not None
    assert (cmp.delta, cmp.ci_low, cmp.ci_high) == (0.0, 0.0, 0.0)
    assert cmp.items == 100 and cmp.basis == "items"


def test_the_interval_is_the_spread_of_the_paired_item_differences() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.5
    cand = base.copy()
    flip = rng.choice(400, 60, replace=False)  # 60 answers change, 40 for the better, 20 for the worse
    cand[flip[:40]] = ~base[flip[:40]] | True
    cand[flip[40:]] = False
    cmp = compare({0: _run(0, cand)}, {0: _run(0, base)}, W, resamples=4000, seed="t")
    assert cmp is not None and cmp.ci_low is not None and cmp.ci_high is not None
    diffs = 100.0 * (cand.astype(float) - base.astype(float))
    assert cmp.delta == pytest.approx(diffs.mean())
    se = diffs.std() / np.sqrt(len(diffs))  # the normal approximation of the same interval
    assert cmp.ci_low == pytest.approx(cmp.delta - 1.96 * se, abs=0.35 * se)
    assert cmp.ci_high == pytest.approx(cmp.delta + 1.96 * se, abs=0.35 * se)


def test_the_interval_covers_a_null_effect_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(60):
        p = rng.uniform(0.3, 0.7, size=300)  # item difficulties; both mixtures equally good
        cand = {s: _run(s, rng.random(300) < p) for s in (0, 1)}
        base = {s: _run(s, rng.random(300) < p) for s in (0, 1)}
        cmp = compare(cand, base, W, confidence=0.9, resamples=400, seed=str(trial))
        assert cmp is not None and cmp.ci_low is not None and cmp.ci_high is not None
        covered += cmp.ci_low <= 0.0 <= cmp.ci_high
    assert covered >= 48  # 90% nominal: 54 of 60 expected; a broken interval covers far less


def test_seeds_pair_up_and_a_seed_only_one_side_ran_is_left_out() -> None:
    a = np.array([1, 1, 0, 0])
    cand = {0: _run(0, a), 1: _run(1, np.array([1, 1, 1, 0])), 7: _run(7, a)}
    base = {0: _run(0, np.array([1, 0, 0, 0])), 1: _run(1, a)}
    cmp = compare(cand, base, W, seed="s")
    assert cmp is not None
    assert cmp.seeds == (0, 1) and cmp.seed_deltas == (25.0, 25.0) and cmp.delta == 25.0
    assert cmp.basis == "items and seeds"
    assert compare({3: _run(3, a)}, base, W) is None


def test_without_items_the_seeds_alone_make_the_interval_and_one_seed_makes_none() -> None:
    def bare(seed: int, score: float) -> SeedRun:
        return SeedRun(seed, score, {"vqa/accuracy": score})

    one = compare({0: bare(0, 60.0)}, {0: bare(0, 50.0)}, W)
    assert one is not None and one.basis == "none" and one.ci_low is None and one.delta == 10.0
    assert verdict("interval", 0.0, one) == "undecided"
    assert verdict("tolerance", 0.0, one) == "accept"
    three = compare({s: bare(s, 50.0 + d) for s, d in enumerate([4, 8, 12])}, {s: bare(s, 50.0) for s in range(3)}, W)
    assert three is not None and three.basis == "seeds"
    assert three.ci_low is not None and three.ci_high is not None
    assert 4.0 <= three.ci_low <= 8.0 <= three.ci_high <= 12.0


def test_metrics_without_items_enter_as_their_per_seed_difference() -> None:
    correct = np.array([1, 0] * 50)
    weights = {"vqa/accuracy": 0.5, "mme/total": 0.5 / 28}  # the score: mean of accuracy and MME total / 28

    def scored(total: float) -> SeedRun:
        run = _run(0, correct, extra={"mme/total": total})
        score = sum(w * run.metrics[k] for k, w in weights.items())
        return SeedRun(0, score, run.metrics, run.items)

    cmp = compare({0: scored(1400.0 + 56.0)}, {0: scored(1400.0)}, weights, seed="m")
    assert cmp is not None and cmp.basis == "items"
    assert cmp.delta == pytest.approx(1.0)  # 56 / 28 / 2
    assert cmp.ci_low == pytest.approx(1.0) and cmp.ci_high == pytest.approx(1.0)  # the items do not differ


def test_resamples_are_the_same_on_every_rerun_and_differ_per_comparison() -> None:
    rng = np.random.default_rng(2)
    cand = {0: _run(0, rng.random(200) < 0.6)}
    base = {0: _run(0, rng.random(200) < 0.5)}
    a, b, c = (compare(cand, base, W, seed=s) for s in ("one", "one", "two"))
    assert a == b and a != c


@pytest.mark.parametrize(
    ("low", "high", "rule", "tolerance", "want"),
    [
        (-0.5, 3.0, "interval", 1.0, "accept"),  # the whole interval above -tolerance
        (-3.0, -1.5, "interval", 1.0, "reject"),  # the whole interval below
        (-2.0, 0.5, "interval", 1.0, "undecided"),  # it straddles -tolerance
        (-2.0, 0.5, "tolerance", 1.0, "accept"),  # the delta (-0.75) decides
        (-3.0, -1.5, "tolerance", 1.0, "reject"),
    ],
)
def test_the_rules(low: float, high: float, rule: str, tolerance: float, want: str) -> None:
    cmp = Comparison((low + high) / 2, low, high, (0,), ((low + high) / 2,), 10, "items")
    assert verdict(rule, tolerance, cmp) == want


def test_a_resample_without_any_item_of_a_small_metric_does_not_pull_the_interval_to_zero() -> None:
    # a benchmark with 300 items on one metric and 1 item on another, both +50 for the candidate
    def run(seed: int, value: float) -> SeedRun:
        items = [ItemScore("b", f"q{i}", "big", value) for i in range(300)] + [ItemScore("b", "q0", "small", value)]
        metrics = {"b/big": value, "b/small": value}
        return SeedRun(seed, value, metrics, tuple(items))

    cmp = compare({0: run(0, 100.0)}, {0: run(0, 50.0)}, {"b/big": 0.5, "b/small": 0.5}, resamples=2000, seed="z")
    assert cmp is not None and cmp.ci_low == pytest.approx(50.0) and cmp.ci_high == pytest.approx(50.0)
