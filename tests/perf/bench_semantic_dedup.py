"""Benchmark: semantic near-duplicates (``curation.dedup.semantic``) over float16 embeddings read as memory maps.

Synthetic 512-d unit embeddings with a clustered structure (each row = its cluster centre scaled by 0.6-0.85 plus
isotropic noise: rows of one cluster have cosine ~0.35-0.75, never 0.9) and 1% planted near-duplicates: copies of
an earlier *original* row at cosine 0.92-0.995 (so every copy must be dropped, onto its original: the truth is
known exactly). They are written as ``.npy`` float16 shards of 10,000 rows into a temporary directory (never held
in memory), then each search runs in a fresh subprocess (``--child``) that opens the shards with
``np.load(mmap_mode="r")`` and calls ``semantic_duplicates`` at threshold 0.9.

Measured per run: wall time of the search, peak RSS of the child above its baseline after imports (psutil,
polled every 20 ms; the kernel's ``ru_maxrss`` of the child from ``os.wait4`` too), recall (planted copies
dropped), precision (drops that are planted copies, onto their original), and the embeddings' size on disk.

- ``--sizes`` (default 1,000,000): ``ivf`` and ``clusters`` (``--methods``) at default settings;
- ``--compare`` (default 50,000): ``exact``, ``ivf`` and ``auto`` (= exact below 100,000 rows), ``--repeats``
  interleaved rounds, median times; the ratio ivf / exact and auto / exact, and whether each agrees with exact.

Target: peak RSS above baseline <= 1.25 x the float16 embeddings' size (out of core: the index holds the kept rows
as fp16), recall >= 0.99 and precision 1.0 for ivf. Results: tests/perf/results/bench_semantic_dedup.json.

Run: ``python tests/perf/bench_semantic_dedup.py [--sizes 1000000] [--compare 50000] [--threads 2]``
(~10 min on 2 cores, ~1.1 GB of disk at 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _common import environment, loadavg, median, write_result

DIM = 512
SHARD = 10_000
THRESHOLD = 0.9
PLANTED = 0.01
ROWS_PER_CENTRE = 100
TARGET_MEMORY = 1.25
TARGET_RECALL = 0.99


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def generate(folder: Path, n: int, seed: int) -> dict[str, Any]:
    """Float16 shards ``emb-#####.npy`` plus the truth: planted copy rows and the original each copies."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // ROWS_PER_CENTRE), DIM)).astype(np.float32))
    copies, originals = [], []
    copied: set[int] = set()
    for part, start in enumerate(range(0, n, SHARD)):
        m = min(SHARD, n - start)
        scale = rng.uniform(0.6, 0.85, (m, 1)).astype(np.float32)
        noise = unit(rng.standard_normal((m, DIM)).astype(np.float32))
        x = unit(centres[rng.integers(0, len(centres), m)] * scale + noise * np.sqrt(1 - scale**2))
        x = x.astype(np.float16)
        planted = np.flatnonzero(rng.random(m) < PLANTED)
        planted = planted[planted + start > 0]
        is_copy = np.zeros(m, dtype=bool)
        is_copy[planted] = True
        for local in planted.tolist():
            while True:  # an earlier original (a copy's source is never a copy: every copy must be dropped)
                src = int(rng.integers(0, start + local))
                if src >= start:
                    if not is_copy[src - start]:
                        base = x[src - start]
                        break
                elif src not in copied:
                    base = np.load(folder / f"emb-{src // SHARD:05d}.npy", mmap_mode="r")[src % SHARD]
                    break
            cos = rng.uniform(0.92, 0.995)
            direction = rng.standard_normal(DIM)
            b = unit(base.astype(np.float64))
            direction = unit(direction - (direction @ b) * b)
            x[local] = (cos * b + np.sqrt(1 - cos**2) * direction).astype(np.float16)
            copies.append(start + local)
            originals.append(src)
            copied.add(start + local)
        np.save(folder / f"emb-{part:05d}.npy", x)
    return {"copies": np.array(copies, dtype=np.int64), "originals": np.array(originals, dtype=np.int64)}


class RssSampler(threading.Thread):
    """Polls this process's RSS; remembers the peak."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def child(folder: Path, method: str, threads: int, out: Path, nlist: int | None, nprobe: int | None) -> None:
    """Search the shards (this process's memory is measured)."""
    import faiss  # noqa: F401 - imported before the baseline, like the module's own import

    from curation.dedup.semantic import EmbeddingBlock, semantic_duplicates

    paths = sorted(folder.glob("emb-*.npy"))

    def blocks():
        start = 0
        for path in paths:
            vectors = np.load(path, mmap_mode="r")
            yield EmbeddingBlock(vectors, np.arange(start, start + len(vectors), dtype=np.int64))
            start += len(vectors)

    baseline = psutil.Process().memory_info().rss
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    found = list(
        semantic_duplicates(
            blocks, DIM, THRESHOLD, method, nlist=nlist, nprobe=nprobe, threads=threads, work=folder / "work"
        )
    )
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    pairs = np.array([(m.row, m.duplicate_of) for m in found], dtype=np.int64).reshape(-1, 2)
    np.save(out.with_suffix(".npy"), pairs)
    out.write_text(
        json.dumps(
            {
                "search_s": seconds,
                "baseline_rss_mib": baseline / 2**20,
                "peak_rss_mib": peak / 2**20,
                "peak_above_baseline_mib": (peak - baseline) / 2**20,
            }
        )
    )


def run_child(folder: Path, method: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(folder), "--method", method, "--threads", str(args.threads)]
    cmd += ["--out", str(out)]
    if args.nlist:
        cmd += ["--nlist", str(args.nlist)]
    if args.nprobe:
        cmd += ["--nprobe", str(args.nprobe)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {method} on {folder} failed")
    result = json.loads(out.read_text())
    result.update(method=method, wall_s=wall, kernel_peak_rss_mib=usage.ru_maxrss / 1024)
    result["pairs"] = np.load(out.with_suffix(".npy"))
    return result


def score(pairs: np.ndarray, truth: dict[str, Any]) -> dict[str, Any]:
    """Recall: planted copies dropped. Precision: drops onto their own family (the original or another copy of
    it: with ``clusters``, a copy whose original fell in another cluster may be dropped onto a sibling copy)."""
    original = dict(zip(truth["copies"].tolist(), truth["originals"].tolist(), strict=True))
    right = sum(1 for row, kept in pairs.tolist() if row in original and original.get(kept, kept) == original[row])
    return {
        "planted": len(original),
        "dropped": len(pairs),
        "recall": sum(1 for row in pairs[:, 0].tolist() if row in original) / max(1, len(original)),
        "precision": right / max(1, len(pairs)),
        "dropped_onto_original": sum(1 for row, kept in pairs.tolist() if original.get(row) == kept),
    }


def summary(run: dict[str, Any], truth: dict[str, Any], disk: int) -> dict[str, Any]:
    out = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.items() if k != "pairs"}
    out |= score(run["pairs"], truth)
    out["peak_above_baseline_over_embeddings"] = round(run["peak_above_baseline_mib"] * 2**20 / disk, 3)
    return out


def prepare(tmp: Path, n: int, seed: int) -> tuple[Path, dict[str, Any], int]:
    folder = tmp / f"n{n}"
    folder.mkdir()
    t = time.perf_counter()
    truth = generate(folder, n, seed)
    disk = sum(p.stat().st_size for p in folder.glob("emb-*.npy"))
    print(
        f"generated {n:,} x {DIM} float16 ({disk / 2**20:,.0f} MiB, {len(truth['copies']):,} planted copies) "
        f"in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    return folder, truth, disk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000", help="rows for the out-of-core runs (comma-separated)")
    parser.add_argument("--methods", default="ivf,clusters", help="methods of the out-of-core runs")
    parser.add_argument(
        "--compare", type=int, default=50_000, help="rows of the exact / ivf / auto comparison (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nlist", type=int, default=None, help="override the default nlist (ivf and clusters)")
    parser.add_argument("--nprobe", type=int, default=None, help="override the default nprobe (ivf)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--name", default="bench_semantic_dedup", help="results file name")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.method, args.threads, Path(args.out), args.nlist, args.nprobe)
        return 0
    result: dict[str, Any] = {
        "benchmark": "semantic_dedup",
        "params": {k: v for k, v in vars(args).items() if k not in ("child", "method", "out")}
        | {"dim": DIM, "threshold": THRESHOLD, "planted_share": PLANTED, "shard_rows": SHARD},
        "loadavg_before": loadavg(),
        "runs": [],
    }
    checks: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench-semantic-", dir=args.tmp) as tmpdir:
        tmp = Path(tmpdir)
        if args.compare:
            folder, truth, disk = prepare(tmp, args.compare, args.seed)
            methods = ["exact", "ivf", "auto"]
            times: dict[str, list[float]] = {m: [] for m in methods}
            last: dict[str, dict[str, Any]] = {}
            for rnd in range(args.repeats):
                for method in methods[rnd % 3 :] + methods[: rnd % 3]:
                    run = run_child(folder, method, args, tmp / f"cmp-{method}.json")
                    times[method].append(run["search_s"])
                    last[method] = run
                    print(f"  {args.compare:,} round {rnd + 1} {method:<6} {run['search_s']:7.2f}s", flush=True)
            med = {m: median(v) for m, v in times.items()}
            exact = last["exact"]["pairs"]
            compare = {
                "rows": args.compare,
                "embeddings_mib": round(disk / 2**20, 1),
                "search_s": {m: [round(x, 3) for x in v] for m, v in times.items()},
                "median_s": {m: round(v, 3) for m, v in med.items()},
                "ratio_ivf_over_exact": round(med["ivf"] / med["exact"], 3),
                "ratio_auto_over_exact": round(med["auto"] / med["exact"], 3),
                "runs": {m: summary(last[m], truth, disk) for m in methods},
            }
            for m in ("ivf", "auto"):
                pairs = last[m]["pairs"]
                same = {tuple(p) for p in pairs.tolist()} & {tuple(p) for p in exact.tolist()}
                compare[f"{m}_agrees_with_exact"] = bool(np.array_equal(pairs, exact))
                compare[f"{m}_drops_shared_with_exact"] = len(same)
            compare["exact_drops"] = len(exact)
            checks["compare_auto_equals_exact"] = compare["auto_agrees_with_exact"]
            checks["compare_exact_recall_1"] = compare["runs"]["exact"]["recall"] == 1.0
            checks["compare_exact_precision_1"] = compare["runs"]["exact"]["precision"] == 1.0
            result["compare"] = compare
            print(json.dumps({k: v for k, v in compare.items() if k != "runs"}), flush=True)
            shutil.rmtree(folder)
        for n in [int(s) for s in args.sizes.split(",") if s]:
            folder, truth, disk = prepare(tmp, n, args.seed)
            for method in [m for m in args.methods.split(",") if m]:
                run = summary(run_child(folder, method, args, tmp / f"{method}-{n}.json"), truth, disk)
                run |= {"rows": n, "embeddings_mib": round(disk / 2**20, 1)}
                print(json.dumps(run), flush=True)
                result["runs"].append(run)
                if method == "ivf":
                    checks[f"ivf_{n}_memory"] = run["peak_above_baseline_over_embeddings"] <= TARGET_MEMORY
                    checks[f"ivf_{n}_recall"] = run["recall"] >= TARGET_RECALL
                    checks[f"ivf_{n}_precision"] = run["precision"] == 1.0
                if method == "clusters":
                    checks[f"clusters_{n}_precision"] = run["precision"] == 1.0
            shutil.rmtree(folder)
    result["target"] = {
        "peak_above_baseline_over_embeddings_max": TARGET_MEMORY,
        "ivf_recall_min": TARGET_RECALL,
        "precision": 1.0,
    }
    result["checks"] = checks
    result["environment"] = environment() | {"faiss": _faiss_version()}
    path = write_result(args.name, result)
    print(f"checks: {checks}")
    print(f"results: {path}")
    return 0 if all(checks.values()) else 1


def _faiss_version() -> str | None:
    try:
        import faiss

        return faiss.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
