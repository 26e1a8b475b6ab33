"""Benchmark: the out-of-core near-duplicate text search at 100k / 1M / 5M signatures.

Synthetic MinHash signatures (128 uint64 values of random bits, written as parquet in row groups of 16,384,
as the workers stage them) with planted families: 5% of the rows are copies of an earlier original sharing
85-100% of its hash values (estimated Jaccard 0.85-1.0; an eighth of them exact copies), and 2% are hard
negatives sharing 40-70% (never duplicates at threshold 0.8). Random 64-bit values never collide by chance,
so the truth is known exactly.

Each size runs in a fresh subprocess (``--child``): fill the search database from the parquet files, then
``SignatureSearch.run`` at threshold 0.8 with the default banding; its peak RSS is the kernel's high-water
mark (``os.wait4``). Measured: wall time per phase, peak RSS, recall (planted copies dropped) and precision
(drops that are planted copies). At the smallest size, the same signatures go through the in-memory
datasketch ``MinHashLSH`` greedy search this toolkit used before (the reference: time and memory ratio).

Targets: peak(5M) / peak(1M) <= 1.25 (memory flat in the number of texts), recall >= 0.99 and precision 1.0
on these planted copies. Results: tests/perf/results/bench_near_dup_text.json.

Run: ``python tests/perf/bench_near_dup_text.py [--sizes 100000,1000000,5000000] [--memory-mb 512]``;
``--compare-threads`` also runs each size with one DuckDB thread (what ``--workers 1`` gives a build).
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
import pyarrow as pa
import pyarrow.parquet as pq
from _common import environment, loadavg, write_result

PERM = 128
THRESHOLD = 0.8
CHUNK = 200_000
ROW_GROUP = 16_384
TARGET_FLAT = 1.25


def generate(folder: Path, n: int, seed: int) -> dict[str, Any]:
    """Parquet files of (pos, sig) plus the truth: copy positions and the original each copies."""
    rng = np.random.default_rng(seed)
    copies, families, negatives = [], [], []
    for part, start in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        sigs = rng.integers(0, 2**63, size=(m, PERM), dtype=np.uint64)
        kind = rng.random(m)
        originals = np.flatnonzero(kind >= 0.07)
        for local in np.flatnonzero(kind < 0.07):
            earlier = originals[originals < local]
            if not earlier.size:
                continue
            source = int(earlier[int(rng.integers(0, earlier.size))])
            if kind[local] < 0.05:  # a planted copy
                share = 1.0 if rng.random() < 0.125 else rng.uniform(0.85, 1.0)
                copies.append(start + local)
                families.append(start + source)
            else:  # a hard negative
                share = rng.uniform(0.4, 0.7)
                negatives.append(start + local)
            cols = rng.permutation(PERM)[: round(share * PERM)]
            sigs[local, cols] = sigs[source, cols]
        table = pa.table({"pos": pa.array(np.arange(start, start + m)), "sig": pa.array(list(map(bytes, sigs)))})
        pq.write_table(table, folder / f"sig-{part:05d}.parquet", row_group_size=ROW_GROUP)
    return {"copies": np.array(copies), "families": np.array(families), "negatives": np.array(negatives)}


def child(folder: Path, memory_mb: int, threads: int, out: Path) -> None:
    """Load the signatures into a search database and search (this process's peak RSS is measured)."""
    from curation.dedup.lsh import SignatureSearch, banding_for

    db = folder / "work" / "search.duckdb"
    started = time.perf_counter()
    con = SignatureSearch.create(db, memory_mb, threads)
    con.execute(f"INSERT INTO sigs SELECT pos, 0, sig FROM read_parquet('{folder}/sig-*.parquet')")
    con.close()
    loaded = time.perf_counter()
    pairs = SignatureSearch(db, PERM, memory_mb, threads).run(THRESHOLD, banding_for(THRESHOLD, PERM))
    done = time.perf_counter()
    np.save(out.with_suffix(".npy"), pairs)
    out.write_text(json.dumps({"load_s": loaded - started, "search_s": done - loaded, "total_s": done - started}))
    shutil.rmtree(db.parent, ignore_errors=True)


def reference(folder: Path, out: Path) -> None:
    """The in-memory greedy search over datasketch's MinHashLSH (what the toolkit did before)."""
    from datasketch import LeanMinHash, MinHashLSH

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERM, weights=(0.1, 0.9))
    kept: dict[int, LeanMinHash] = {}
    found = []
    for path in sorted(folder.glob("sig-*.parquet")):
        table = pq.read_table(path)
        for pos, sig in zip(table.column("pos").to_pylist(), table.column("sig").to_pylist(), strict=True):
            m = LeanMinHash(seed=0, hashvalues=np.frombuffer(sig, np.uint64), scheme="affine64")
            match = next((j for j in sorted(lsh.query(m)) if m.jaccard(kept[j]) >= THRESHOLD), -1)
            if match < 0:
                lsh.insert(pos, m, check_duplication=False)
                kept[pos] = m
            else:
                found.append((pos, match))
    np.save(out.with_suffix(".npy"), np.array(found, dtype=np.int64).reshape(-1, 2))
    out.write_text(json.dumps({"total_s": time.perf_counter() - started}))


def run_child(args: list[str], out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--out", str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args} failed")
    result = json.loads(out.read_text())
    result.update(wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024)
    result["pairs"] = np.load(out.with_suffix(".npy"))
    return result


def score(pairs: np.ndarray, truth: dict[str, Any]) -> dict[str, Any]:
    family = dict(zip(truth["copies"].tolist(), truth["families"].tolist(), strict=True))
    dropped = pairs[:, 0].tolist()
    right = sum(1 for d, k in pairs.tolist() if d in family and family.get(k, k) == family[d])
    return {
        "planted": len(family),
        "dropped": len(dropped),
        "recall": sum(1 for d in dropped if d in family) / max(1, len(family)),
        "precision": right / max(1, len(dropped)),
        "hard_negatives_dropped": int(np.isin(pairs[:, 0], truth["negatives"]).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,5000000")
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-threads", action="store_true", help="also search each size with 1 thread")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.memory_mb, args.threads, Path(args.out))
        return
    if args.reference:
        reference(Path(args.reference), Path(args.out))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {
        "params": vars(args) | {"perm": PERM, "threshold": THRESHOLD},
        "loadavg_before": loadavg(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-near-dup-text-", dir=args.tmp) as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            t = time.perf_counter()
            truth = generate(folder, n, args.seed)
            gen_s = time.perf_counter() - t
            common = ["--memory-mb", str(args.memory_mb), "--threads", str(args.threads)]
            ours = run_child(["--child", str(folder), *common], Path(tmp) / f"ours-{n}.json")
            run = {"texts": n, "generate_s": gen_s, "ours": _summary(ours, truth)}
            if args.compare_threads and args.threads > 1:
                one = run_child(
                    ["--child", str(folder), "--memory-mb", str(args.memory_mb), "--threads", "1"],
                    Path(tmp) / f"one-{n}.json",
                )
                run["one_thread"] = _summary(one, truth)
                run["speedup_threads"] = one["wall_s"] / ours["wall_s"]
            if n == sizes[0]:
                ref = run_child(["--reference", str(folder)], Path(tmp) / f"ref-{n}.json")
                run["datasketch_in_memory"] = _summary(ref, truth)
                run["time_ratio_ours_over_reference"] = ours["wall_s"] / ref["wall_s"]
                run["memory_ratio_ours_over_reference"] = ours["peak_rss_mib"] / ref["peak_rss_mib"]
                run["same_drops_as_reference"] = bool(np.array_equal(ours["pairs"], ref["pairs"]))
            print(json.dumps(run), flush=True)
            result["runs"].append(run)
            shutil.rmtree(folder)
    peaks = {r["texts"]: r["ours"]["peak_rss_mib"] for r in result["runs"]}
    if 1_000_000 in peaks and 5_000_000 in peaks:
        ratio = peaks[5_000_000] / peaks[1_000_000]
        result["peak_ratio_5m_over_1m"] = ratio
        result["target_flat"] = TARGET_FLAT
        result["met"] = ratio <= TARGET_FLAT
    result["environment"] = environment()
    path = write_result("bench_near_dup_text" + ("_threads" if args.compare_threads else ""), result)
    print(f"results: {path}")


def _summary(run: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "pairs"} | score(run["pairs"], truth)


if __name__ == "__main__":
    main()
