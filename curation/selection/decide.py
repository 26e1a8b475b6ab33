"""Decisions that know their uncertainty: a candidate mixture against its baseline, paired on the same seeds
and the same benchmark items.

The score delta is the mean over paired seeds of (candidate score - baseline score). Its interval is a
bootstrap over seeds and items together: each resample draws the paired seeds with replacement and, per
benchmark, the items with replacement, and recomputes every metric of the score that is a mean over items
(:mod:`curation.selection.items`) from the per-item differences. Metrics without per-item values enter each
resample as their per-seed difference. The percentile interval is centred on the reported delta (the
per-item means may differ from an evaluator's own aggregate by rounding or weighting).

Rules (``decision.rule``): ``tolerance`` accepts when delta >= -tolerance (the paper's); ``interval`` accepts
when the interval's lower bound >= -tolerance, rejects when its upper bound < -tolerance, and is otherwise
undecided: the engine runs another seed of both trials, up to ``max_seeds``, then falls back to the delta.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np

from curation.selection.items import ItemScore

Verdict = Literal["accept", "reject", "undecided"]
Basis = Literal["items and seeds", "items", "seeds", "none"]
_CHUNK = 256  # resamples drawn at a time: memory is CHUNK x items per benchmark


@dataclass(frozen=True)
class SeedRun:
    """One trial's outcome: its seed, score, metrics and per-item values."""

    seed: int
    score: float
    metrics: dict[str, float]
    items: tuple[ItemScore, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """A candidate against its baseline on their paired seeds."""

    delta: float
    ci_low: float | None
    ci_high: float | None
    seeds: tuple[int, ...]
    seed_deltas: tuple[float, ...]
    items: int  # paired (benchmark, item) pairs the interval resamples
    basis: Basis

    def as_dict(self) -> dict[str, object]:
        return {
            "delta": self.delta,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "seeds": list(self.seeds),
            "seed_deltas": list(self.seed_deltas),
            "paired_items": self.items,
            "interval_basis": self.basis,
        }


def verdict(rule: str, tolerance: float, cmp: Comparison) -> Verdict:
    """What ``rule`` says about ``cmp`` (``tolerance`` never returns undecided)."""
    if rule == "tolerance":
        return "accept" if cmp.delta >= -tolerance else "reject"
    if cmp.ci_low is None or cmp.ci_high is None:
        return "undecided"
    if cmp.ci_low >= -tolerance:
        return "accept"
    if cmp.ci_high < -tolerance:
        return "reject"
    return "undecided"


def compare(
    candidate: dict[int, SeedRun],
    baseline: dict[int, SeedRun],
    weights: dict[str, float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: str = "",
) -> Comparison | None:
    """Paired comparison over the seeds both sides ran (None when they share none). ``weights`` maps each
    metric of the score to its weight in the score (``scale / number of metrics``); ``seed`` names the
    comparison so that its resamples, and so the report, are the same on every rerun."""
    seeds = tuple(sorted(set(candidate) & set(baseline)))
    if not seeds:
        return None
    seed_deltas = tuple(candidate[s].score - baseline[s].score for s in seeds)
    delta = float(np.mean(seed_deltas))
    blocks, constant = _paired_blocks(candidate, baseline, weights, seeds)
    n_items = sum(b.values.shape[2] for b in blocks)
    basis = _basis(n_items, len(seeds))
    if basis == "none":
        return Comparison(delta, None, None, seeds, seed_deltas, 0, basis)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    centre = _replicates(blocks, constant, np.ones((1, len(seeds))) / len(seeds), [_all_once(b) for b in blocks])[0]
    draws = []
    for start in range(0, resamples, _CHUNK):
        k = min(_CHUNK, resamples - start)
        seed_w = _counts(rng, len(seeds), k) / len(seeds)
        item_n = [_counts(rng, b.values.shape[2], k) for b in blocks]
        draws.append(_replicates(blocks, constant, seed_w, item_n))
    spread = np.concatenate(draws) - centre
    alpha = (1 - confidence) / 2
    low, high = np.quantile(spread, [alpha, 1 - alpha])
    return Comparison(delta, delta + float(low), delta + float(high), seeds, seed_deltas, n_items, basis)


def _basis(items: int, seeds: int) -> Basis:
    """What the interval resamples: nothing to resample (one seed, no items) means no interval."""
    if items:
        return "items and seeds" if seeds > 1 else "items"
    return "seeds" if seeds > 1 else "none"


def _counts(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` resamples of ``n`` things with replacement, as counts per thing (k x n)."""
    return rng.multinomial(n, np.full(n, 1 / n), size=k).astype(np.float64)


@dataclass(frozen=True)
class _Block:
    """One benchmark's paired items: ``values[k, s, i]`` = weight x (candidate - baseline) of metric k, seed s,
    item i; ``member[k, i]`` whether item i has a value of metric k."""

    values: np.ndarray
    member: np.ndarray


def _paired_blocks(
    candidate: dict[int, SeedRun], baseline: dict[int, SeedRun], weights: dict[str, float], seeds: tuple[int, ...]
) -> tuple[list[_Block], np.ndarray]:
    """Per benchmark, the metrics of the score with items on every paired seed of both sides; and the
    per-seed weighted deltas of the other metrics of the score."""
    constant = np.zeros(len(seeds))
    per_metric: dict[str, dict[str, np.ndarray]] = {}  # metric key -> item -> per-seed weighted differences
    bench_of: dict[str, str] = {}
    for key, weight in weights.items():
        cand = [_values(candidate[s].items, key) for s in seeds]
        base = [_values(baseline[s].items, key) for s in seeds]
        common = set.intersection(*(set(c) & set(b) for c, b in zip(cand, base, strict=True)))
        if not common:
            constant += [weight * (candidate[s].metrics[key] - baseline[s].metrics[key]) for s in seeds]
            continue
        per_metric[key] = {i: weight * np.array([c[i] - b[i] for c, b in zip(cand, base, strict=True)]) for i in common}
        bench_of[key] = key.split("/", 1)[0]
    by_bench: dict[str, list[str]] = defaultdict(list)
    for key in per_metric:
        by_bench[bench_of[key]].append(key)
    blocks = []
    for keys in by_bench.values():
        items = sorted(set().union(*(per_metric[k] for k in keys)))
        values = np.zeros((len(keys), len(seeds), len(items)))
        member = np.zeros((len(keys), len(items)))
        for k, key in enumerate(keys):
            for i, item in enumerate(items):
                if item in per_metric[key]:
                    values[k, :, i] = per_metric[key][item]
                    member[k, i] = 1.0
        blocks.append(_Block(values, member))
    return blocks, constant


def _values(items: tuple[ItemScore, ...], key: str) -> dict[str, float]:
    return {row.item: row.value for row in items if row.key == key}


def _all_once(block: _Block) -> np.ndarray:
    return np.ones((1, block.values.shape[2]))


def _replicates(blocks: list[_Block], constant: np.ndarray, seed_w: np.ndarray, item_n: list[np.ndarray]) -> np.ndarray:
    """The delta of each resample: ``seed_w`` (R x seeds) weights the seeds, ``item_n[b]`` (R x items) counts
    each item of block b."""
    per_seed = np.broadcast_to(constant, seed_w.shape).copy()  # R x seeds
    for block, counts in zip(blocks, item_n, strict=True):
        for k in range(block.values.shape[0]):
            mask = block.member[k]
            den = counts @ mask  # R
            num = counts @ (block.values[k] * mask).T  # R x seeds
            everything = (block.values[k] * mask).sum(axis=1) / mask.sum()  # seeds: the metric on all its items
            # a resample that drew none of this metric's items (a metric with very few) says nothing of it
            per_seed += np.where(den[:, None] > 0, num / np.where(den > 0, den, 1.0)[:, None], everything)
    return (seed_w * per_seed).sum(axis=1)
