"""Benchmark: LAION metadata filters + nested-subset selection over 10,000,000 synthetic metadata rows.

Writes 20 parquet parts (half in the "original" layout, half "joined": the two layouts LAION metadata is
published in) with realistic
URL and caption lengths, then runs ``curation.sources.laion.metadata.select_metadata`` (DuckDB, out of core) in a
child process that reports its own peak RSS, and, as the reference in the same script, a bare DuckDB scan
that reads the same columns (``count(*)``, ``sum(length(URL))``, ``sum(length(TEXT))``). Targets: selection
<= 60 s and < 2 GiB peak on a 2-core machine.

Run: ``python tests/perf/bench_laion_select.py [--rows 10000000] [--max-rows 5000000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _common import environment, loadavg, write_result

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from curation.sources.laion.metadata import select_metadata
from curation.recipe import LaionFilters
import duckdb
files = sorted(Path({meta!r}).glob("*.parquet"))
mode = sys.argv[1]
t = time.perf_counter()
if mode == "select":
    sel = select_metadata(files, LaionFilters(), {max_rows}, 0, Path({out!r}) / "selected.parquet")
    info = {{"selected": sel.selected, "input": sel.input, "dropped": sel.dropped, "skipped": sel.skipped_filters}}
else:
    con = duckdb.connect()
    sql = "SELECT count(*), sum(length(URL)), sum(length(TEXT)) FROM read_parquet(?, union_by_name=true)"
    row = con.execute(sql, [[str(f) for f in files]]).fetchone()
    info = {{"rows": row[0]}}
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_mib": peak, **info}}))
"""


def make_part(rng: np.random.Generator, n: int, start: int, layout: str) -> pa.Table:
    ids = pa.array(np.arange(start, start + n))
    hosts = pa.array(rng.integers(0, 50_000, n)).cast(pa.string())
    url = pc.binary_join_element_wise(
        "https://cdn", hosts, ".example.com/images/2021/", ids.cast(pa.string()), "/photo-large.jpg", ""
    )
    dup = rng.random(n) < 0.02  # some exact URL duplicates
    url = pc.if_else(
        pa.array(dup),
        pc.binary_join_element_wise(
            "https://cdn1.example.com/images/2021/",
            pa.array(rng.integers(0, 1000, n)).cast(pa.string()),
            "/photo-large.jpg",
            "",
        ),
        url,
    )
    pool = pa.array(
        [
            "",
            "x",
            "on a table",
            "with some words that describe it in a sentence",
            "a long caption " * 8,
            "red",
            "the view from the hill at dawn",
        ]
    )
    text = pc.binary_join_element_wise(
        "a photo of item", ids.cast(pa.string()), pool.take(pa.array(rng.integers(0, len(pool), n))), " "
    )
    width = rng.integers(32, 4000, n)
    height = rng.integers(32, 4000, n)
    sim = rng.normal(0.31, 0.03, n)
    if layout == "original":
        nsfw = rng.choice(np.array(["UNLIKELY", "UNSURE", "NSFW"]), n, p=[0.9, 0.07, 0.03])
        return pa.table(
            {
                "SAMPLE_ID": ids,
                "URL": url,
                "TEXT": text,
                "HEIGHT": pa.array(height.astype(float)),
                "WIDTH": pa.array(width.astype(float)),
                "LICENSE": pa.array(["?"] * n),
                "NSFW": pa.array(nsfw),
                "similarity": pa.array(sim),
            }
        )
    return pa.table(
        {
            "URL": url,
            "TEXT": text,
            "WIDTH": pa.array(width.astype(np.int32)),
            "HEIGHT": pa.array(height.astype(np.int32)),
            "similarity": pa.array(sim),
            "hash": ids,
            "punsafe": pa.array(rng.random(n).astype(np.float32) * 0.6),
            "pwatermark": pa.array(rng.random(n).astype(np.float32)),
        }
    )


def run_child(code: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--parts", type=int, default=20)
    ap.add_argument("--max-rows", type=int, default=5_000_000, help="largest subset size")
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="bench_laion_") as tmp:
        meta, out = Path(tmp) / "meta", Path(tmp) / "out"
        meta.mkdir()
        out.mkdir()
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        per = args.rows // args.parts
        for i in range(args.parts):
            layout = "original" if i % 2 == 0 else "joined"
            pq.write_table(make_part(rng, per, i * per, layout), meta / f"part-{i:05d}-x-c000.snappy.parquet")
        generate_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in meta.glob("*.parquet"))
        code = CHILD.format(root=root, meta=str(meta), out=str(out), max_rows=args.max_rows)
        load = loadavg()
        ref = run_child(code, "scan")
        sel = run_child(code, "select")
    accounted = sel["selected"] + sum(sel["dropped"].values())
    result = {
        "benchmark": "bench_laion_select",
        "params": {
            "rows": per * args.parts,
            "parts": args.parts,
            "max_rows": args.max_rows,
            "parquet_bytes": size,
            "generate_s": round(generate_s, 1),
            "loadavg_before": load,
        },
        "reference_scan": ref,
        "selection": sel,
        "ratio_selection_over_scan": round(sel["seconds"] / ref["seconds"], 2),
        "checks": {"every_row_accounted": accounted == sel["input"] == per * args.parts},
        "target": {
            "max_s": 60,
            "max_peak_mib": 2048,
            "met": sel["seconds"] <= 60 and sel["peak_rss_mib"] < 2048 and accounted == sel["input"],
        },
        "environment": environment(),
    }
    path = write_result("bench_laion_select", result)
    print(
        f"{per * args.parts:,} rows ({size / 2**20:.0f} MiB parquet): selection {sel['seconds']:.1f}s, "
        f"peak {sel['peak_rss_mib']:.0f} MiB; bare DuckDB scan {ref['seconds']:.1f}s "
        f"(ratio {result['ratio_selection_over_scan']}); target met: {result['target']['met']}"
    )
    print(f"selected {sel['selected']:,}; dropped {sel['dropped']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
