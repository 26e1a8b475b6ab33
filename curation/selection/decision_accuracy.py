"""Decision accuracy: how often each decision rule makes the right call on candidates whose effect is known by
construction, and what it costs in trials (DataDecide's measure, applied to choosing VLM training data).

Each world is the toy world with graded candidates (:func:`curation.selection.toy.make_graded_world`), made
with its own seed: other images, another random model. Every rule runs the same sweep directory, so a trial
two rules need is trained once; the cost of a rule is the trials its decisions used (the baseline's and the
candidates', every seed), whether or not another rule had already trained them.

``python -m curation.selection.decision_accuracy --worlds 5 --out DIR`` writes ``decision_accuracy.json`` and
``decision_accuracy.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from curation.recipe import validate_recipe
from curation.selection.sweep import run_selection
from shards.atomic import atomic_write_bytes, atomic_write_json

WorldFn = Callable[[Path, int], Path]  # (directory, world seed) -> the selection recipe of that world


def rules(tolerance: float, max_seeds: int) -> dict[str, dict[str, Any]]:
    """The rules compared: recipe fields each one overrides."""
    seeds = list(range(max_seeds))
    return {
        "tolerance, 1 seed": {"decision": {"rule": "tolerance", "tolerance": tolerance}, "seeds": [0]},
        f"tolerance, mean of {max_seeds} seeds": {
            "decision": {"rule": "tolerance", "tolerance": tolerance},
            "seeds": seeds,
        },
        f"interval, up to {max_seeds} seeds": {
            "decision": {"rule": "interval", "tolerance": tolerance, "max_seeds": max_seeds},
            "seeds": [0],
        },
    }


def measure(
    worlds: list[int],
    out: Path,
    make_world: WorldFn,
    truth: dict[str, str],
    compared: dict[str, dict[str, Any]],
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every rule on every world (first category only); the per-world decisions and the summary."""
    console = console or Console(stderr=True)
    runs = []
    for world in worlds:
        directory = out / f"world-{world}"
        recipe = yaml.safe_load(make_world(directory / "world", world).read_text())
        for name, override in compared.items():
            started = time.perf_counter()
            doc = run_selection(
                validate_recipe({**recipe, **override}), directory / "sweep", progress=False, console=console
            )
            runs.append(_world_run(world, name, doc["categories"][0], truth, time.perf_counter() - started))
            console.print(f"world {world}, {name}: {runs[-1]['right']}/{len(truth)} right, {runs[-1]['trials']} trials")
    return {"worlds": worlds, "truth": truth, "rules": list(compared), "runs": runs, "summary": summarize(runs, truth)}


def _world_run(world: int, rule: str, category: dict[str, Any], truth: dict[str, str], wall: float) -> dict[str, Any]:
    rows = category["candidates"]
    decisions = {r["name"]: r["decision"] for r in rows}
    trials = len(category["baseline_seeds"]) + sum(len(r["trials"]) for r in rows)
    seconds = category["baseline_trial_seconds"] + sum(r["trial_seconds"] for r in rows)
    return {
        "world": world,
        "rule": rule,
        "decisions": decisions,
        "right": sum(decisions[n] == want for n, want in truth.items()),
        "undecided": sorted(r["name"] for r in rows if r["reason"] == "undecided"),
        "deltas": {r["name"]: r["delta"] for r in rows},
        "intervals": {r["name"]: [r["ci_low"], r["ci_high"]] for r in rows},
        "trials": trials,
        "trial_seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
    }


def summarize(runs: list[dict[str, Any]], truth: dict[str, str]) -> list[dict[str, Any]]:
    """Per rule: the share of right decisions (all, and per candidate) and the mean trials per world."""
    out = []
    for rule in dict.fromkeys(r["rule"] for r in runs):
        mine = [r for r in runs if r["rule"] == rule]
        out.append(
            {
                "rule": rule,
                "accuracy": sum(r["right"] for r in mine) / (len(mine) * len(truth)),
                "per_candidate": {
                    n: sum(r["decisions"][n] == want for r in mine) / len(mine) for n, want in truth.items()
                },
                "undecided_fallbacks": sum(len(r["undecided"]) for r in mine),
                "trials_per_world": statistics.fmean(r["trials"] for r in mine),
                "trial_seconds_per_world": statistics.fmean(r["trial_seconds"] for r in mine),
            }
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    truth = doc["truth"]
    head = ["rule", "right", *[f"{n} ({'accept' if w == 'accepted' else 'reject'})" for n, w in truth.items()]]
    head += ["trials / world", "trial s / world", "undecided → delta"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in doc["summary"]:
        cells = [s["rule"], f"{100 * s['accuracy']:.0f}%", *[f"{100 * s['per_candidate'][n]:.0f}%" for n in truth]]
        cells += [f"{s['trials_per_world']:.1f}", f"{s['trial_seconds_per_world']:.0f}", str(s["undecided_fallbacks"])]
        lines.append("| " + " | ".join(cells) + " |")
    return f"Decision accuracy over {len(doc['worlds'])} worlds (seeds {doc['worlds']}).\n\n" + "\n".join(lines) + "\n"


def _toy_world(steps: int, benchmark_rows: int, workers: int) -> WorldFn:
    def make(directory: Path, seed: int) -> Path:
        from curation.selection.toy import build_benchmarks, make_graded_world

        path = directory / "selection.yaml"
        if not path.is_file():
            path = make_graded_world(directory, seed=seed, steps=steps, benchmark_rows=benchmark_rows)
        build_benchmarks(directory, workers)
        return path

    return make


def main(argv: list[str] | None = None) -> int:
    from curation.selection.toy import GRADED_TRUTH

    parser = argparse.ArgumentParser(description="Decision accuracy of the selection rules on the graded toy world.")
    parser.add_argument("--out", type=Path, required=True, help="work directory (worlds, sweeps, the results)")
    parser.add_argument("--worlds", type=int, default=5, help="how many worlds (seeds 0..N-1)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per trial")
    parser.add_argument("--benchmark-rows", type=int, default=60, help="items in the colour benchmark")
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--max-seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="processes for the dataset builds")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = measure(
        list(range(args.worlds)),
        args.out,
        _toy_world(args.steps, args.benchmark_rows, args.workers),
        GRADED_TRUTH,
        rules(args.tolerance, args.max_seeds),
    )
    doc["params"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    atomic_write_json(args.out / "decision_accuracy.json", doc)
    table = markdown(doc)
    atomic_write_bytes(args.out / "decision_accuracy.md", table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
