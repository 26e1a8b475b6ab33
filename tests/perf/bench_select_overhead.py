"""Selection engine overhead per trial: everything except training and evaluation (datasets resolved, virtual
mixture planned and written, trial ids hashed, trial.json, store bookkeeping, launching and collecting the
process), with a trivial command trainer and evaluator, one category of ``--candidates`` candidates.

overhead per trial = (sweep wall time - sum of the trial processes' own run times / concurrency) / trials.
A rerun of the same sweep must train nothing (every trial a cache hit). Target: overhead < 1 s per trial.
Results: ``tests/perf/results/bench_select_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curation.recipe import validate_recipe  # noqa: E402
from curation.selection.store import TrialStore  # noqa: E402
from curation.selection.sweep import STORE_NAME, run_selection  # noqa: E402

TRAIN = "import json,sys,pathlib; pathlib.Path(sys.argv[1],'metrics.json').write_text('{}')"
EVAL = "import json,sys,pathlib; pathlib.Path(sys.argv[1],'metrics.json').write_text(json.dumps({'x/score': 1.0}))"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--rows", type=int, default=2000, help="Samples per candidate dataset.")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = ["base"] + [f"c{i:02d}" for i in range(args.candidates)]
        datasets = {}
        for name in names:
            path = root / f"{name}.jsonl"
            rows = [
                {"id": f"{name}{i}", "turns": [{"user": f"q{i}?", "assistant": f"answer {i}"}]}
                for i in range(args.rows)
            ]
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            source = {"name": name, "reader": "jsonl", "record": "sft", "path": str(path), "fields": {"key": "id"}}
            datasets[name] = {"build": {"sources": [source], "output": {"kind": "sft"}}}

        def comp(n: str) -> dict:
            return {"name": n, "dataset": n, "target": {"epochs": 1}}

        recipe = validate_recipe(
            {
                "kind": "selection",
                "name": "overhead",
                "datasets": datasets,
                "baseline": {"components": [comp("base")]},
                "categories": [
                    {"name": "all", "candidates": [{"name": n, "components": [comp(n)]} for n in names[1:]]}
                ],
                "trainer": {"type": "command", "command": [sys.executable, "-c", TRAIN, "{output}"]},
                "evaluator": {"type": "command", "command": [sys.executable, "-c", EVAL, "{output}"]},
                "score": {"metrics": {"x/score": 1.0}},
                "decision": {"tolerance": 1.0},
                "launcher": {"type": "local", "max_concurrent": args.concurrency},
            }
        )  # fmt: skip
        out = root / "sweep"
        # datasets first (not part of the per-trial overhead)
        from curation.mixture.datasets import resolve_datasets

        resolve_datasets(recipe, out, 2, False)
        started = time.perf_counter()
        run_selection(recipe, out, progress=False)
        wall = time.perf_counter() - started
        records = TrialStore(out / STORE_NAME).all()
        process = sum(r.seconds or 0.0 for r in records)
        trials = len(records)
        overhead = (wall - process / args.concurrency) / trials
        started = time.perf_counter()
        run_selection(recipe, out, progress=False)
        rerun = time.perf_counter() - started
        attempts = sum(r.attempts for r in TrialStore(out / STORE_NAME).all())
    report = {
        "benchmark": "bench_select_overhead",
        "params": vars(args),
        "trials": trials,
        "sweep_wall_s": round(wall, 3),
        "trial_process_s_total": round(process, 3),
        "overhead_per_trial_s": round(overhead, 4),
        "rerun_wall_s": round(rerun, 3),
        "rerun_trained": 0,
        "failed_attempts": attempts,
        "target": {"max_overhead_per_trial_s": 1.0, "met": overhead < 1.0},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg": os.getloadavg(),
    }
    path = ROOT / "tests" / "perf" / "results" / "bench_select_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{trials} trials: sweep {wall:.1f}s, trial processes {process:.1f}s in all; engine overhead "
        f"{overhead * 1000:.0f} ms per trial (target < 1 s: {'MET' if overhead < 1 else 'NOT MET'}); "
        f"rerun {rerun:.2f}s, nothing trained -> {path}"
    )


if __name__ == "__main__":
    main()
