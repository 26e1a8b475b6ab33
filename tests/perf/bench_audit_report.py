"""The audit report of a 10,000,000-sample dataset: statistics, distributions and plots from the sidecars
(DuckDB), rendered to HTML and markdown. Target: under 30 s on the 2-core machine.

The dataset is ``bench_audit.py``'s: 50 sidecar files of 200,000 rows in ``schemas.SIDECAR_SCHEMA`` with a
consistent ``dataset.json``; it has no tars, so the report runs with ``per_source=0`` (no previews here);
previews read only the shards they show (tested in tests/integration/test_audit_report.py) and are timed
separately on a real build (the demo).
Results: ``tests/perf/results/bench_audit_report.json``.
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
sys.path.insert(0, str(Path(__file__).parent))

import bench_audit  # noqa: E402

from curation.report.audit_page import write_audit_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dataset"
        root.mkdir()
        paths, infos = bench_audit.write_dataset(root, args.files, args.rows, seed=0)
        bench_audit.write_manifest(root, infos, bench_audit.pyarrow_stats(paths))
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = write_audit_report(root, per_source=0)
            times.append(time.perf_counter() - started)
        html_bytes = out["html"].stat().st_size
        # previews on a real build: the demo
        from curation.build.runner import build
        from curation.cli.demo import make_demo_inputs
        from curation.recipe import load_recipe

        inputs = Path(tmp) / "demo-inputs"
        make_demo_inputs(inputs)
        recipe = load_recipe(
            "demo",
            [
                f"sources.captions.path={inputs / 'captions.jsonl'}",
                f"sources.captions.image_root={inputs / 'images'}",
                f"sources.conversations.path={inputs / 'conversations.parquet'}",
                "output.rejects=true",
            ],
        )
        demo = build(recipe, Path(tmp) / "demo", workers=2, progress=False).out
        started = time.perf_counter()
        write_audit_report(demo)
        demo_seconds = time.perf_counter() - started
    samples = args.files * args.rows
    best = min(times)
    report = {
        "benchmark": "bench_audit_report",
        "params": vars(args),
        "samples": samples,
        "seconds": [round(t, 3) for t in times],
        "best_seconds": round(best, 3),
        "html_bytes": html_bytes,
        "target": {"max_seconds": 30.0, "met": best < 30.0},
        "demo_report_with_previews_seconds": round(demo_seconds, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg": os.getloadavg(),
    }
    path = ROOT / "tests" / "perf" / "results" / "bench_audit_report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"audit report of {samples:,} samples: {best:.1f}s (target < 30 s: {'MET' if best < 30 else 'NOT MET'}); "
        f"the demo's report with previews {demo_seconds:.2f}s -> {path}"
    )


if __name__ == "__main__":
    main()
