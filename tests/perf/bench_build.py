"""Benchmark: ``curate build`` of an SFT parquet against a plain ``datasets`` + ``webdataset`` script, the cost
of a global step, and ``--workers 2`` against ``--workers 1``.

Input per size: one parquet file in the Cauldron / HF layout (``images``: list of ``{bytes, path}``, ``texts``:
list of ``{user, assistant, source}``), row groups of ``--row-group`` (1,000) rows, one JPEG per sample and
1-3 turns. The JPEGs come from a pool of ``--pool`` (50) distinct noise-ish images of ~10-40 KB; every sample
gets its own bytes (a JPEG comment segment naming the sample is inserted after SOI), except the planted
exact duplicates: every 200th sample (0.5%) carries the very bytes of the sample 100 rows earlier.

Variants, each a subprocess started by a small wrapper (``WRAPPER``) that times it and reads
``getrusage(RUSAGE_CHILDREN)``: wall time, user/sys CPU seconds (workers included), ``peak_rss_mib_kernel``
(the kernel's high-water mark of the largest single process), and, polled by psutil every ``--interval``
(20 ms), ``peak_tree_rss_mib``: the RSS summed over the command's whole process tree (with informational
``peak_tree_pss_mib``, polled every 0.25 s, which does not count shared pages once per process):

- ``curate``: ``curate build RECIPE --out OUT --workers 1 -q`` with the lean SFT recipe: the ``parquet``
  source (``record: sft``) and ``output: {kind: sft, rejects: true}``, no steps (every build still runs
  ``read``, ``probe``, ``write`` and the global ``unique_key``);
- ``plain``: ``PLAIN_SCRIPT`` below: ``datasets.load_dataset("parquet", data_files=...)`` (arrow cache in a
  fresh directory per run), iterate the rows, ``webdataset.ShardWriter`` writing ``KEY.jpg`` + ``KEY.json``
  (the turns) into shards of the same size;
- ``curate_dedup`` (first size only): ``curate`` plus ``{step: exact_image_dedup}``;
- ``curate_w2``: ``curate`` with ``--workers 2``;
- informational (``--no-extra`` skips them): ``curate_steps``, the record steps of the built-in
  ``sft_parquet`` recipe (``text_length`` on answers, ``image_decode``, ``image_size``); ``plain_stream``,
  the plain script with ``load_dataset(..., streaming=True)`` (no arrow cache); fixed costs: ``import_plain``
  (``python -c "import datasets, webdataset"``; webdataset imports torch), ``import_curate`` (the build's
  modules) and ``curate_tiny`` / ``plain_tiny`` (both sides on a 500-sample input).

Ratios (medians of ``--rounds`` interleaved rounds, order rotated each round, after an untimed warm-up of
each command on 500 samples; outputs deleted and ``os.sync()`` called between runs, outside the timing):

1. ``plain / curate`` time at each size (> 1: we are faster); target >= 1.0 at the largest size;
2. ``curate_dedup / curate`` time at the first size; target <= 1.10; the dedup build must drop exactly
   the planted duplicates (``stats.json``) and keep the rest (``dataset.json``);
3. ``curate / curate_w2`` time at each size; target >= 1.7 (2 cores) at the largest size.

Run: ``python tests/perf/bench_build.py [--sizes 20000,80000] [--rounds 3] [--tmp DIR]``;
``--quick``: 2,000 samples, 1 round (partitions and shards scaled to 1,000 samples), a smoke run.
Results: ``tests/perf/results/bench_build.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import WORDS, TreeRssSampler, environment, loadavg, median, noise_jpeg, write_result
from bench_memory import curate_cmd

TARGET_VS_PLAIN = 1.0  # plain time / curate time at the largest size
TARGET_GLOBAL_COST = 1.10  # with / without exact_image_dedup
TARGET_WORKERS = 1.7  # --workers 1 time / --workers 2 time
DUP_EVERY = 200  # 0.5% of the samples are exact image duplicates ...
DUP_BACK = 100  # ... of the sample this many rows earlier (never itself a planted duplicate)
WARMUP_ROWS = 500  # the warm-up input, also built each round by the informational *_tiny variants
CURATE_IMPORTS = "import curation.cli.app, curation.build.runner, curation.sources.parquet, curation.steps"
SOURCE_NAME = "conversations"

RECIPE = """\
kind: build
name: benchbuild
description: bench_build.py - SFT parquet (Cauldron layout) -> sft shards ({variant})
seed: 0
sources:
  - name: {source}
    reader: parquet
    path: {path}
    record: sft
    fields: {{images: images, turns: texts}}
    partition_size: {partition_size}
steps: {steps}
output:
  kind: sft
  max_samples_per_shard: {shard_size}
  rejects: true
"""
STEPS = {
    "lean": "[]",
    "dedup": "\n  - step: exact_image_dedup",
    # The record steps of the built-in sft_parquet recipe (its exact_image_dedup is measured separately).
    "sft_steps": (
        "\n  - step: text_length\n    field: answers\n    min_chars: 1"
        "\n  - step: image_decode"
        "\n  - step: image_size\n    min_side: 16"
    ),
}

PLAIN_SCRIPT = """\
import sys

import datasets
import webdataset as wds

src, out, shard_size, cache, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
datasets.disable_progress_bars()
if mode == "stream":
    ds = datasets.load_dataset("parquet", data_files=src, split="train", streaming=True)
else:
    ds = datasets.load_dataset("parquet", data_files=src, split="train", cache_dir=cache)
n = 0
with wds.ShardWriter(f"{out}/plain-%06d.tar", maxcount=shard_size, verbose=0) as sink:
    for i, row in enumerate(ds):
        sink.write({"__key__": f"{i:09d}", "jpg": row["images"][0]["bytes"], "json": {"turns": row["texts"]}})
        n += 1
print(n)
"""
QUIET_ENV = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# ---- inputs --------------------------------------------------------------------------------------------------
def make_pool(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(n):
        w = int(rng.integers(160, 449))
        h = int(rng.integers(120, 337))
        pool.append(noise_jpeg(seed * 100_000 + i, int(rng.integers(4_000, 40_001)), size=(w, h)))
    return pool


def unique_jpeg(base: bytes, i: int) -> bytes:
    """``base`` with a COM segment naming sample ``i`` after SOI: the same pixels, distinct bytes (sha256)."""
    comment = f"bench_build sample {i}".encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


def sentence(i: int, k: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 13 + j * 3) % len(WORDS)] for j in range(words)).capitalize()


def turns_of(i: int) -> list[dict[str, str]]:
    return [
        {
            "user": sentence(i, 2 * t, 6 + (i + t) % 9) + "?",
            "assistant": sentence(i, 2 * t + 1, 3 + (i * 5 + t) % 40) + ".",
            "source": "bench_build",
        }
        for t in range(1 + i % 3)
    ]


def is_planted(i: int) -> bool:
    return i % DUP_EVERY == DUP_EVERY - 1


def make_parquet(path: Path, n: int, pool: list[bytes], row_group: int) -> dict[str, Any]:
    """One parquet file of ``n`` samples in the Cauldron layout; returns what was planted."""
    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    text_t = pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])
    schema = pa.schema([("images", pa.list_(image_t)), ("texts", pa.list_(text_t))])
    path.parent.mkdir(parents=True, exist_ok=True)
    planted, image_bytes, turns = 0, 0, 0
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, n, row_group):
            rows = []
            for i in range(lo, min(n, lo + row_group)):
                j = i - DUP_BACK if is_planted(i) and i >= DUP_BACK else i
                planted += j != i
                data = unique_jpeg(pool[j % len(pool)], j)
                image_bytes += len(data)
                t = turns_of(i)
                turns += len(t)
                rows.append({"images": [{"bytes": data, "path": None}], "texts": t})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema), row_group_size=row_group)
    return {
        "planted_duplicates": planted,
        "image_bytes": image_bytes,
        "turns": turns,
        "file_bytes": path.stat().st_size,
    }


def write_recipe(root: Path, variant: str, steps: str, parquet: Path, partition_size: int, shard_size: int) -> Path:
    path = root / f"recipe-{variant}.yaml"
    path.write_text(
        RECIPE.format(
            variant=variant,
            source=SOURCE_NAME,
            path=parquet,
            steps=steps,
            partition_size=partition_size,
            shard_size=shard_size,
        )
    )
    return path


# ---- running -------------------------------------------------------------------------------------------------
# Runs the command as its child and reports wall time and getrusage(RUSAGE_CHILDREN) of it (and of the
# processes it waited for: the build's workers) to the JSON file argv[1]. The kernel's max RSS of a process
# starts at the RSS of the process that exec'd it (exec records the old image's high-water mark): this small
# wrapper keeps that floor at ~10 MiB instead of the RSS of this benchmark.
WRAPPER = """\
import json, os, resource, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], work: Path, interval: float) -> dict[str, Any]:
    """Run ``cmd`` under ``WRAPPER``: wall time, CPU seconds, the kernel's max RSS of its largest process, and
    the peak RSS / PSS summed over its process tree (polled)."""
    log, usage = work / "run.log", work / "run.usage.json"
    wrapper = work / "wrapper.py"
    if not wrapper.exists():
        wrapper.write_text(WRAPPER)
    with open(log, "wb") as out:  # a file, not a pipe: nothing can block the child while we wait
        proc = subprocess.Popen(
            [sys.executable, "-S", str(wrapper), str(usage), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **QUIET_ENV},
        )
        sampler = TreeRssSampler(proc.pid, interval, include_root=False)
        sampler.start()
        code = proc.wait()
        sampler.stop()
    text = log.read_bytes().decode(errors="replace")
    log.unlink()
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}\n{text[-3000:]}")
    ru = json.loads(usage.read_text())
    usage.unlink()
    return {
        "wall_s": round(ru["wall_s"], 3),
        "peak_tree_rss_mib": round(sampler.peak / (1 << 20), 1),
        "peak_tree_pss_mib": round(sampler.peak_pss / (1 << 20), 1),
        "peak_tree_processes": sampler.peak_procs,
        "peak_rss_mib_kernel": round(ru["maxrss_kib"] / 1024, 1),  # the largest single process (KiB on Linux)
        "rss_samples": sampler.samples,
        "user_s": round(ru["user_s"], 2),
        "sys_s": round(ru["sys_s"], 2),
        "output_tail": text.strip()[-300:],
    }


class Case:
    """One measured variant at one size: how to run it and how to check its output."""

    def __init__(self, name: str, size: int, kind: str, **kw: Any) -> None:
        self.name, self.size, self.kind, self.kw = name, size, kind, kw
        self.runs: list[dict[str, Any]] = []
        self.last_output = ""

    def command(self, out: Path) -> list[str]:
        if self.kind == "curate":
            workers = str(self.kw["workers"])
            return [*curate_cmd(), "build", str(self.kw["recipe"]), "--out", str(out), "--workers", workers, "-q"]
        if self.kind == "plain":
            return [
                sys.executable,
                str(self.kw["script"]),
                str(self.kw["parquet"]),
                str(out),
                str(self.kw["shard_size"]),
                str(out / "_hf_cache"),  # fresh per run: load_dataset converts the parquet every time
                self.kw["mode"],
            ]
        return list(self.kw["argv"])  # startup

    def run(self, work: Path, interval: float) -> dict[str, Any]:
        out = work / f"out-{self.name}-{self.size}"
        if out.exists():
            shutil.rmtree(out)
        if self.kind == "plain":
            out.mkdir(parents=True)
        os.sync()  # no dirty pages of an earlier run are flushed during this one
        r = run_measured(self.command(out), work, interval)
        self.last_output = r["output_tail"]
        r.update(self.check(out))
        shutil.rmtree(out, ignore_errors=True)
        return r

    def check(self, out: Path) -> dict[str, Any]:
        if self.kind == "startup":
            return {}
        if self.kind == "plain":
            tars = sorted(out.glob("plain-*.tar"))
            lines = self.last_output.strip().splitlines()
            last = lines[-1].strip() if lines else ""
            written = int(last) if last.isdigit() else -1
            if written != self.size:
                raise SystemExit(f"{self.name} at {self.size}: the plain script wrote {written} samples")
            return {"shards": len(tars), "output_bytes": sum(p.stat().st_size for p in tars), "samples_kept": written}
        manifest = json.loads((out / "dataset.json").read_text())
        stats = json.loads((out / "stats.json").read_text())
        kept = manifest["totals"]["samples"]
        by_step = drops_by_step(stats)
        dropped = by_step.get("exact_image_dedup", 0)
        expect_dropped = self.kw.get("expect_dropped", 0)
        if dropped != expect_dropped or sum(by_step.values()) != dropped or kept != self.kw["rows"] - dropped:
            raise SystemExit(
                f"{self.name} at {self.size}: kept {kept}, drops by step {by_step}; expected "
                f"{self.kw['rows'] - expect_dropped} kept and {expect_dropped} exact_image_dedup drops only"
            )
        logs = sorted((out / "_logs").glob("build-*.json"))
        log = json.loads(logs[-1].read_text()) if logs else {}
        shards = list(out.glob("*.tar"))
        return {
            "samples_kept": kept,
            "dropped_exact_image_dedup": dropped,
            "rejects_samples": sum(r["samples"] for r in manifest.get("rejects") or []),
            "shards": len(shards),
            "output_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "build_log_seconds": log.get("seconds"),
            "build_log_slowest_partition_s": log.get("slowest_partition_seconds"),
            "build_log_steps": log.get("steps"),
        }


def drops_by_step(stats: dict[str, Any]) -> dict[str, int]:
    """Dropped samples per step (all sources) from ``stats.json``'s ``accounting.steps``."""
    return {
        step["step"]: sum(sum(src["dropped"].values()) for src in step["sources"].values())
        for step in stats["accounting"]["steps"]
    }


def summarize(cases: list[Case]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        runs = c.runs
        entry: dict[str, Any] = {
            "size": c.size,
            "wall_s": [r["wall_s"] for r in runs],
            "median_wall_s": round(median([r["wall_s"] for r in runs]), 3),
            "median_peak_tree_rss_mib": round(median([r["peak_tree_rss_mib"] for r in runs]), 1),
            "max_peak_tree_rss_mib": max(r["peak_tree_rss_mib"] for r in runs),
            "median_peak_tree_pss_mib": round(median([r["peak_tree_pss_mib"] for r in runs]), 1),
            "median_peak_rss_mib_kernel": round(median([r["peak_rss_mib_kernel"] for r in runs]), 1),
            "median_cpu_s": round(median([r["user_s"] + r["sys_s"] for r in runs]), 2),
            "runs": runs,
        }
        if c.kind != "startup":
            entry["samples_per_s"] = round(c.size / entry["median_wall_s"], 1)
        out[f"{c.name}@{c.size}"] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,80000", help="sample counts (comma-separated); the first also runs dedup")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    ap.add_argument("--pool", type=int, default=50, help="distinct pool images (bytes made unique per sample)")
    ap.add_argument("--row-group", type=int, default=1000, help="parquet rows per row group")
    ap.add_argument("--partition-size", type=int, default=10000, help="source partition_size (the toolkit default)")
    ap.add_argument("--shard-size", type=int, default=10000, help="samples per shard, both sides")
    ap.add_argument("--interval", type=float, default=0.02, help="RSS polling interval in seconds")
    ap.add_argument("--no-extra", dest="extra", action="store_false", help="skip the informational variants")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 samples, 1 round, 1,000-sample partitions")
    ap.add_argument("--tmp", default=None, help="directory for the temporary inputs/outputs (default: system temp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    partition_size, shard_size, rounds = args.partition_size, args.shard_size, args.rounds
    if args.quick:
        sizes, rounds = [2000], 1
        partition_size, shard_size, args.row_group = 1000, 1000, min(args.row_group, 500)

    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench_build-", dir=args.tmp) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        pool = make_pool(args.pool, seed=3)
        lens = [len(b) for b in pool]
        print(
            f"image pool: {len(pool)} JPEGs, {min(lens):,}-{max(lens):,} bytes (mean {np.mean(lens):,.0f}) "
            f"in {time.perf_counter() - t:.1f}s",
            flush=True,
        )
        script = root / "plain_script.py"
        script.write_text(PLAIN_SCRIPT)
        inputs: dict[int, dict[str, Any]] = {}
        cases: list[Case] = []
        for n in sorted(set(sizes) | ({WARMUP_ROWS} if args.warmup or args.extra else set())):
            t = time.perf_counter()
            parquet = root / f"in-{n}" / "train-00000-of-00001.parquet"
            info = make_parquet(parquet, n, pool, args.row_group)
            info["make_s"] = round(time.perf_counter() - t, 1)
            inputs[n] = info
            print(
                f"input {n:,}: {info['file_bytes'] / 1e6:,.0f} MB parquet, {info['turns']:,} turns, "
                f"{info['planted_duplicates']} planted duplicates ({info['make_s']}s)",
                flush=True,
            )
        recipes: dict[tuple[int, str], Path] = {}
        for n in inputs:
            parquet = root / f"in-{n}" / "train-00000-of-00001.parquet"
            for variant, steps in STEPS.items():
                recipes[n, variant] = write_recipe(
                    root / f"in-{n}", variant, steps, parquet, partition_size, shard_size
                )

        def cases_at(n: int, first: bool) -> list[Case]:
            parquet = root / f"in-{n}" / "train-00000-of-00001.parquet"
            planted = inputs[n]["planted_duplicates"]
            plain = {"script": script, "parquet": parquet, "shard_size": shard_size}
            cs = [
                Case("curate", n, "curate", recipe=recipes[n, "lean"], workers=1, rows=n),
                Case("plain", n, "plain", mode="load", **plain),
                Case("curate_w2", n, "curate", recipe=recipes[n, "lean"], workers=2, rows=n),
            ]
            if first:
                cs.append(
                    Case(
                        "curate_dedup",
                        n,
                        "curate",
                        recipe=recipes[n, "dedup"],
                        workers=1,
                        rows=n,
                        expect_dropped=planted,
                    )
                )
            if args.extra:
                cs.append(Case("curate_steps", n, "curate", recipe=recipes[n, "sft_steps"], workers=1, rows=n))
                cs.append(Case("plain_stream", n, "plain", mode="stream", **plain))
            return cs

        for i, n in enumerate(sizes):
            cases += cases_at(n, i == 0)
        if args.extra:  # fixed costs: imports alone, and each side on the 500-sample input
            cases.append(Case("import_plain", 0, "startup", argv=[sys.executable, "-c", "import datasets, webdataset"]))
            cases.append(Case("import_curate", 0, "startup", argv=[sys.executable, "-c", CURATE_IMPORTS]))
            tiny = cases_at(WARMUP_ROWS, False)[:2]
            for c in tiny:
                c.name += "_tiny"
            cases += tiny

        if args.warmup:  # untimed: page cache, .pyc files, the datasets module cache
            t = time.perf_counter()
            for c in cases_at(WARMUP_ROWS, True):
                c.run(root, args.interval)
            print(f"warm-up ({WARMUP_ROWS} samples, every command): {time.perf_counter() - t:.1f}s", flush=True)

        for rnd in range(rounds):
            order = cases[rnd % len(cases) :] + cases[: rnd % len(cases)]
            for c in order:
                r = c.run(root, args.interval)
                r["round"] = rnd
                c.runs.append(r)
                print(
                    f"  round {rnd + 1}/{rounds} {c.name:>14} @ {c.size:>7,}: {r['wall_s']:7.2f}s, "
                    f"peak tree RSS {r['peak_tree_rss_mib']:7.1f} MiB (PSS {r['peak_tree_pss_mib']:7.1f}), "
                    f"cpu {r['user_s'] + r['sys_s']:6.1f}s",
                    flush=True,
                )

    variants = summarize(cases)
    med = {k: v["median_wall_s"] for k, v in variants.items()}
    first, last = sizes[0], max(sizes)
    ratios: dict[str, Any] = {}
    for n in sizes:
        ratios[f"plain_over_curate@{n}"] = round(med[f"plain@{n}"] / med[f"curate@{n}"], 3)
        peak = {k: variants[f"{k}@{n}"]["median_peak_tree_rss_mib"] for k in ("curate", "plain")}
        ratios[f"peak_rss_plain_over_curate@{n}"] = round(peak["plain"] / peak["curate"], 3)
        if args.extra:
            ratios[f"plain_stream_over_curate@{n}"] = round(med[f"plain_stream@{n}"] / med[f"curate@{n}"], 3)
            ratios[f"curate_steps_over_curate@{n}"] = round(med[f"curate_steps@{n}"] / med[f"curate@{n}"], 3)
    global_cost = round(med[f"curate_dedup@{first}"] / med[f"curate@{first}"], 3)
    for n in sizes:
        ratios[f"w1_over_w2@{n}"] = round(med[f"curate@{n}"] / med[f"curate_w2@{n}"], 3)
    speedup = ratios[f"w1_over_w2@{last}"]
    ratios[f"dedup_over_curate@{first}"] = global_cost
    vs_plain = ratios[f"plain_over_curate@{last}"]
    targets = {
        "vs_plain": {
            "metric": f"plain time / curate time at {last} samples (speed of curate relative to the plain script)",
            "min": TARGET_VS_PLAIN,
            "value": vs_plain,
            "met": vs_plain >= TARGET_VS_PLAIN,
        },
        "global_step_cost": {
            "metric": f"curate_dedup time / curate time at {first} samples (exact_image_dedup dropping 0.5%)",
            "max": TARGET_GLOBAL_COST,
            "value": global_cost,
            "met": global_cost <= TARGET_GLOBAL_COST,
            "dropped_equals_planted": True,  # checked on every run (the script exits otherwise)
            "planted": inputs[first]["planted_duplicates"],
        },
        "workers_speedup": {
            "metric": f"--workers 1 time / --workers 2 time at {last} samples (each size is in the ratios)",
            "min": TARGET_WORKERS,
            "value": speedup,
            "met": speedup >= TARGET_WORKERS,
        },
    }
    doc: dict[str, Any] = {
        "benchmark": "bench_build",
        "description": "curate build vs a plain datasets+webdataset script; global-step cost; --workers 2 speedup",
        "params": {
            "sizes": sizes,
            "rounds": rounds,
            "quick": args.quick,
            "pool_images": len(pool),
            "pool_image_bytes_min_mean_max": [min(lens), round(float(np.mean(lens))), max(lens)],
            "row_group": args.row_group,
            "partition_size": partition_size,
            "shard_size": shard_size,
            "planted_duplicates": f"every {DUP_EVERY}th sample has the image bytes of the sample {DUP_BACK} rows back",
            "warmup_rows": WARMUP_ROWS if args.warmup else None,
            "interval_s": args.interval,
            "inputs": {str(k): v for k, v in inputs.items() if k in sizes},
            "recipe_template": RECIPE,
            "steps": STEPS,
            "plain_script": PLAIN_SCRIPT,
            "loadavg_before": load_before,
        },
        "variants": variants,
        "medians_s": med,
        "ratios": ratios,
        "targets": targets,
        "environment": environment(),
    }
    path = write_result("bench_build", doc)

    print("\nmedians (wall s, peak tree RSS MiB):")
    for k, v in variants.items():
        print(f"  {k:>24}: {v['median_wall_s']:8.2f}s  {v['median_peak_tree_rss_mib']:7.1f} MiB")
    print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    for name, t in targets.items():
        bound = f">= {t['min']}" if "min" in t else f"<= {t['max']}"
        print(f"{name}: {t['value']:.3f} (target {bound}): {'MET' if t['met'] else 'NOT MET'}")
    print(f"load average before {load_before}, after {loadavg()}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
