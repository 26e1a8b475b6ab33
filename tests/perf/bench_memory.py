"""Benchmark: peak memory (RSS) and throughput of a real ``curate build`` at 20,000 and 100,000 samples.

Inputs per size: two jsonl sources (70% / 30% of the rows) and one image folder holding a pool of
``--pool`` distinct noise-ish JPEGs of 5-20 KB, reused under unique keys (so the recipe has no
``exact_image_dedup``, which would drop the repeats). About 1% of captions are blank, so
``text_length`` drops them and the ``rejects/`` writer has work too. The recipe (written into the temp
dir): jsonl sources with ``record: pair`` -> ``text_length`` -> ``image_size`` -> ``output: {kind: pair}``,
10,000 samples per partition and per shard, ``rejects: true``.

Each size runs ``curate build RECIPE.yaml --out DIR --workers 1 -q`` as a subprocess. Peak memory is
measured two ways:

- ``peak_tree_rss_mib``: psutil polling every ``--interval`` s (default 20 ms) of the RSS summed over the
  process and all its descendants (the largest sum seen);
- ``peak_rss_mib_kernel``: ``ru_maxrss`` from ``os.wait4`` on the child (the kernel's exact high-water
  mark of the largest single process waited for; no polling gaps);
- ``peak_tree_pss_mib`` (informational, polled every 0.25 s): summed PSS, which splits shared pages between
  the processes mapping them (with ``--workers N`` the tree RSS counts shared libraries N+2 times).

Target: flat memory, i.e. peak(100k) / peak(20k) close to 1 (<= 1.25 here) and both under 1 GiB.
Results go to ``tests/perf/results/bench_memory.json`` (with a down-sampled RSS timeline per run).

Run: ``python tests/perf/bench_memory.py [--sizes 20000,100000] [--pool 300]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import WORDS, TreeRssSampler, environment, loadavg, noise_jpeg, write_result

TARGET_RATIO = 1.25
TARGET_MAX_MIB = 1024.0
SOURCES = (("web", 0.7), ("curated", 0.3))
BLANK_EVERY = 97  # ~1% of captions are blank -> text_too_short

RECIPE = """\
kind: build
name: benchmem
description: bench_memory.py - pair captions from two jsonl sources, no dedup (images repeat by design)
seed: 0
sources:
{sources}
steps:
  - step: text_length
    min_chars: 3
    max_chars: 2000
  - step: image_size
    min_side: 32
    max_aspect_ratio: 3.0
output:
  kind: pair
  max_samples_per_shard: 10000
  rejects: true
"""
SOURCE = """\
  - name: {name}
    reader: jsonl
    path: {path}
    image_root: {images}
    record: pair
    fields: {{key: id, image: file, caption: text}}
    partition_size: 10000
"""


def make_pool(images: Path, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        w = int(rng.integers(128, 257))
        h = int(rng.integers(96, 193))
        data = noise_jpeg(seed * 100_000 + i, int(rng.integers(5_000, 20_001)), size=(w, h))
        name = f"pool_{i:05d}.jpg"
        (images / name).write_bytes(data)
        names.append(name)
    return names


def make_inputs(root: Path, n: int, pool: list[str], images: Path) -> tuple[Path, dict[str, int], int]:
    """Jsonl sources with ``n`` rows in all and the recipe; returns (recipe, rows per source, blanks)."""
    root.mkdir(parents=True, exist_ok=True)
    counts, blanks, start = {}, 0, 0
    blocks = []
    for j, (name, share) in enumerate(SOURCES):
        rows = n - start if j == len(SOURCES) - 1 else int(n * share)
        path = root / f"{name}.jsonl"
        with open(path, "w") as f:
            for i in range(start, start + rows):
                if i % BLANK_EVERY == 5:
                    text = " "
                    blanks += 1
                else:
                    text = " ".join(WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(6 + i % 19)).capitalize()
                row = {"id": f"{name}-{i:09d}", "file": pool[i % len(pool)], "text": text, "license": "CC-BY"}
                f.write(json.dumps(row) + "\n")
        counts[name] = rows
        start += rows
        blocks.append(SOURCE.format(name=name, path=path, images=images))
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(sources="".join(blocks).rstrip("\n")))
    return recipe, counts, blanks


def curate_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "curate"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("curate")
    if found:
        return [found]
    return [sys.executable, "-c", "from curation.cli.app import main; main()"]


def run_build(recipe: Path, out: Path, interval: float, workers: int) -> dict[str, Any]:
    cmd = [*curate_cmd(), "build", str(recipe), "--out", str(out), "--workers", str(workers), "-q"]
    log = out.with_name(out.name + ".stderr")
    with open(log, "wb") as err:  # a file, not a pipe: nothing can block the child while we wait4()
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        sampler = TreeRssSampler(proc.pid, interval)
        sampler.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = log.read_bytes()
    log.unlink()
    if proc.returncode != 0:
        raise SystemExit(f"curate build failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    step = max(1, len(sampler.timeline) // 200)
    return {
        "cmd": "curate " + " ".join(cmd[-7:]),
        "wall_s": round(wall, 2),
        "peak_tree_rss_mib": round(sampler.peak / (1 << 20), 1),
        "peak_tree_processes": sampler.peak_procs,
        "peak_tree_pss_mib": round(sampler.peak_pss / (1 << 20), 1),
        "peak_rss_mib_kernel": round(rusage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
        "rss_samples": sampler.samples,
        "user_s": round(rusage.ru_utime, 2),
        "sys_s": round(rusage.ru_stime, 2),
        "stderr_tail": stderr.decode().strip()[-300:],
        "timeline_s_mib": [(round(a, 2), round(b / (1 << 20), 1)) for a, b in sampler.timeline[::step]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,100000", help="comma-separated sample counts (first two compared)")
    ap.add_argument("--pool", type=int, default=300, help="distinct images reused under unique keys")
    ap.add_argument("--workers", type=int, default=1, help="curate build --workers (the target is for 1)")
    ap.add_argument("--interval", type=float, default=0.02, help="RSS polling interval in seconds")
    ap.add_argument("--tmp", default=None, help="directory for the temporary inputs/outputs (default: system temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_memory-", dir=args.tmp) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        images = root / "images"
        pool = make_pool(images, args.pool, seed=1)
        pool_bytes = [(images / p).stat().st_size for p in pool]
        print(
            f"image pool: {len(pool)} JPEGs, {min(pool_bytes):,}-{max(pool_bytes):,} bytes "
            f"(mean {np.mean(pool_bytes):,.0f}) in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        load_before = loadavg()
        for n in sizes:
            inputs = root / f"in-{n}"
            recipe, counts, blanks = make_inputs(inputs, n, pool, images)
            out = root / f"out-{n}"
            r = run_build(recipe, out, args.interval, args.workers)
            manifest = json.loads((out / "dataset.json").read_text())
            kept = manifest["totals"]["samples"]
            if kept != n - blanks:
                raise SystemExit(f"size {n}: expected {n - blanks} samples kept, dataset.json says {kept}")
            logs = sorted((out / "_logs").glob("build-*.json"))
            log = json.loads(logs[-1].read_text()) if logs else {}
            out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            r.update(
                {
                    "samples_in": n,
                    "samples_kept": kept,
                    "dropped_text_too_short": blanks,
                    "rows_per_source": counts,
                    "shards": manifest["totals"]["shards"],
                    "output_bytes": out_bytes,
                    "samples_per_s_wall": round(n / r["wall_s"], 1),
                    "build_log_seconds": log.get("seconds"),
                    "build_log_rows_per_s": log.get("rows_per_second"),
                }
            )
            runs[str(n)] = r
            print(
                f"  {n:>8,} samples: peak tree RSS {r['peak_tree_rss_mib']:7.1f} MiB "
                f"(kernel max {r['peak_rss_mib_kernel']:7.1f}, PSS {r['peak_tree_pss_mib']:7.1f} MiB), "
                f"{r['wall_s']:6.1f}s wall, "
                f"{r['samples_per_s_wall']:7,.0f} samples/s ({r['shards']} shards)",
                flush=True,
            )
            shutil.rmtree(out)
            shutil.rmtree(inputs)

    doc: dict[str, Any] = {
        "benchmark": "bench_memory",
        "description": "peak RSS and throughput of `curate build` at growing sizes",
        "params": {
            "sizes": sizes,
            "pool_images": len(pool),
            "pool_image_bytes_min_mean_max": [min(pool_bytes), round(float(np.mean(pool_bytes))), max(pool_bytes)],
            "interval_s": args.interval,
            "workers": args.workers,
            "recipe": RECIPE,
            "loadavg_before": load_before,
        },
        "runs": runs,
        "environment": environment(),
    }
    if len(sizes) >= 2:
        a, b = str(sizes[0]), str(sizes[1])
        ratio = runs[b]["peak_tree_rss_mib"] / runs[a]["peak_tree_rss_mib"]
        ratio_kernel = runs[b]["peak_rss_mib_kernel"] / runs[a]["peak_rss_mib_kernel"]
        under = all(runs[k]["peak_tree_rss_mib"] < TARGET_MAX_MIB for k in (a, b))
        doc["ratio_peak"] = {"sizes": [sizes[0], sizes[1]], "tree": round(ratio, 3), "kernel": round(ratio_kernel, 3)}
        doc["target"] = {
            "metric": f"peak tree RSS ratio {b}/{a} and both peaks",
            "max_ratio": TARGET_RATIO,
            "max_peak_mib": TARGET_MAX_MIB,
            "ratio_met": ratio <= TARGET_RATIO,
            "under_1gib": under,
            "met": ratio <= TARGET_RATIO and under,
        }
        doc["throughput_ratio"] = round(runs[b]["samples_per_s_wall"] / runs[a]["samples_per_s_wall"], 3)
    path = write_result("bench_memory", doc)
    if "target" in doc:
        t = doc["target"]
        print(
            f"peak ratio {b}/{a}: {doc['ratio_peak']['tree']:.3f} (kernel {doc['ratio_peak']['kernel']:.3f}); "
            f"target ratio <= {TARGET_RATIO} and < 1 GiB: {'MET' if t['met'] else 'NOT MET'}; "
            f"throughput ratio {doc['throughput_ratio']:.3f}"
        )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
