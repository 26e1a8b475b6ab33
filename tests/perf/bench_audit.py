"""Benchmark: the audit's per-source statistics over 5,000,000 sidecar rows, DuckDB versus pandas.

Generates ``--files`` parquet sidecars of ``--rows`` rows each (default 50 x 100,000 = 5M rows) that follow
``schemas.SIDECAR_SCHEMA`` exactly (checked), written with the writer's own parquet options
(``shards.writer.PARQUET_OPTIONS``). Columns come from numpy vectorised: ~20 sources with skewed shares,
``pair`` / ``sft`` kinds, 0-2 images per row (list columns ``widths`` / ``heights`` / ``image_sha256`` /
``image_formats`` built from offsets, 64-hex sha256 strings), token counts, payload bytes, origins.

Timed (interleaved, ``--repeats`` times each, median reported; the files are in the page cache):

- ``duckdb``: ``curation.report.audit.source_stats(paths)``.
- ``pandas``: ``pd.read_parquet`` of the 6 needed columns per file, ``pd.concat``, ``groupby("source")``.
- ``pyarrow`` (informational): ``pq.read_table`` of the same columns + ``Table.group_by``.
- ``audit``: the full ``curation.report.audit.audit(dir)`` over a ``dataset.json`` listing the sidecars (tars need
  not exist: the audit reads only the manifest and the sidecars).

All give identical per-source numbers (checked). Target: DuckDB <= 3 s. Results go to
``tests/perf/results/bench_audit.json``.

Run: ``python tests/perf/bench_audit.py [--files 50] [--rows 100000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _common import environment, loadavg, median, write_result

from curation import __version__
from curation.report.audit import audit, source_stats
from schemas import SIDECAR_SCHEMA
from shards.manifest import DatasetManifest, ShardInfo
from shards.writer import PARQUET_OPTIONS

TARGET_DUCKDB_S = 3.0
N_SOURCES = 20
PREFIX = "bench"
STAT_COLUMNS = ["source", "n_images", "turns", "text_tokens", "answer_tokens", "bytes"]
SOURCES = [f"source_{i:02d}" for i in range(N_SOURCES)]
_ZIPF = np.array([1.0 / (i + 1) for i in range(N_SOURCES)])
SOURCE_SHARES = _ZIPF / _ZIPF.sum()  # skewed: the first source is 20x the last
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """A string array from an (n, width) uint8 matrix of ASCII characters, without a Python loop."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    data = np.ascontiguousarray(chars).tobytes()
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def numbered(prefix: str, numbers: np.ndarray, digits: int = 10) -> pa.Array:
    """``prefix`` + zero-padded ``numbers`` as a string array (vectorised)."""
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)
    digit_chars = ((numbers[:, None] // powers) % 10 + ord("0")).astype(np.uint8)
    head = np.broadcast_to(np.frombuffer(prefix.encode(), dtype=np.uint8), (len(numbers), len(prefix)))
    return fixed_width_strings(np.hstack([head, digit_chars]))


def list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def make_sidecar(file_index: int, rows: int, rng: np.random.Generator) -> pa.Table:
    first = file_index * rows
    source_idx = rng.choice(N_SOURCES, size=rows, p=SOURCE_SHARES)
    is_sft = rng.random(rows) < 0.4
    n_images = rng.choice(3, size=rows, p=[0.1, 0.75, 0.15]).astype(np.int32)
    n_images[~is_sft] = 1  # pairs have exactly one image; sft rows have 0-2
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(n_images, out=offsets[1:])
    m = int(offsets[-1])
    widths = rng.integers(64, 2048, size=m, dtype=np.int32)
    heights = rng.integers(64, 2048, size=m, dtype=np.int32)
    sha_chars = HEX[rng.integers(0, 16, size=(m, 64), dtype=np.uint8)]
    formats = pc.take(pa.array(["jpg", "png", "webp"]), pa.array(rng.choice(3, size=m, p=[0.8, 0.15, 0.05])))
    turns = np.where(is_sft, rng.integers(1, 6, size=rows), 1).astype(np.int32)
    answer_tokens = (rng.gamma(2.0, 30.0, size=rows) * turns).astype(np.int64)
    text_tokens = answer_tokens + np.where(is_sft, rng.integers(5, 40, size=rows) * turns, 0).astype(np.int64)
    nbytes = (rng.lognormal(10.8, 0.6, size=rows) * n_images).astype(np.int64) + text_tokens * 5 + 120
    ordinals = np.arange(first, first + rows, dtype=np.int64)
    arrays = [
        numbered("key-", ordinals),
        pc.take(pa.array(["pair", "sft"]), pa.array(is_sft.astype(np.int8))),
        pc.take(pa.array(SOURCES), pa.array(source_idx)),
        pa.array(np.full(rows, f"{PREFIX}-{file_index:06d}.tar"), pa.string()),
        pa.array(np.arange(rows, dtype=np.int32)),
        pa.array(n_images),
        list_array(offsets, pa.array(widths)),
        list_array(offsets, pa.array(heights)),
        list_array(offsets, fixed_width_strings(sha_chars)),
        list_array(offsets, formats),
        pa.array(text_tokens),
        pa.array(answer_tokens),
        pa.array(turns),
        pa.nulls(rows, pa.int32()),
        pa.array(nbytes),
        numbered("/data/inputs/part.jsonl:", ordinals + 1),
    ]
    arrays += [
        pa.nulls(rows, f.type)
        for f in SIDECAR_SCHEMA
        if f.name
        not in (
            "key",
            "kind",
            "source",
            "shard",
            "index",
            "n_images",
            "widths",
            "heights",
            "image_sha256",
            "image_formats",
            "text_tokens",
            "answer_tokens",
            "turns",
            "pages",
            "bytes",
            "origin",
        )
    ]
    return pa.Table.from_arrays(arrays, schema=SIDECAR_SCHEMA)


def write_dataset(root: Path, files: int, rows: int, seed: int) -> tuple[list[Path], list[ShardInfo]]:
    rng = np.random.default_rng(seed)
    paths, infos = [], []
    for i in range(files):
        table = make_sidecar(i, rows, rng)
        if i == 0 and not table.schema.equals(SIDECAR_SCHEMA, check_metadata=True):
            raise SystemExit("generated sidecar does not match SIDECAR_SCHEMA")
        stem = f"{PREFIX}-{i:06d}"
        path = root / f"{stem}.parquet"
        pq.write_table(table, path, **PARQUET_OPTIONS)
        paths.append(path)
        infos.append(
            ShardInfo(
                name=f"{stem}.tar",
                sidecar=path.name,
                stats=f"{stem}.stats.json",
                sha256="0" * 64,
                samples=rows,
                bytes=int(pc.sum(table["bytes"]).as_py()),
            )
        )
    return paths, infos


def pandas_stats(paths: list[Path]) -> list[dict[str, Any]]:
    df = pd.concat([pd.read_parquet(p, columns=STAT_COLUMNS) for p in paths], ignore_index=True)
    g = df.groupby("source", sort=True).agg(
        samples=("source", "size"),
        images=("n_images", "sum"),
        qa_pairs=("turns", "sum"),
        text_tokens=("text_tokens", "sum"),
        answer_tokens=("answer_tokens", "sum"),
        bytes=("bytes", "sum"),
    )
    return [{"source": s, **{k: int(v) for k, v in row.items()}} for s, row in g.iterrows()]


def pyarrow_stats(paths: list[Path]) -> list[dict[str, Any]]:
    table = pa.concat_tables(pq.read_table(p, columns=STAT_COLUMNS) for p in paths)
    g = table.group_by("source").aggregate(
        [
            ("source", "count"),
            ("n_images", "sum"),
            ("turns", "sum"),
            ("text_tokens", "sum"),
            ("answer_tokens", "sum"),
            ("bytes", "sum"),
        ]
    )
    names = ["samples", "images", "qa_pairs", "text_tokens", "answer_tokens", "bytes"]
    cols = ["source_count", "n_images_sum", "turns_sum", "text_tokens_sum", "answer_tokens_sum", "bytes_sum"]
    out = [
        {"source": s, **{n: int(g[c][i].as_py()) for n, c in zip(names, cols, strict=True)}}
        for i, s in enumerate(g["source"].to_pylist())
    ]
    return sorted(out, key=lambda r: r["source"])


def normalise(rows: list[dict[str, Any]]) -> list[dict[str, int | str]]:
    return [{k: (v if k == "source" else int(v)) for k, v in r.items()} for r in rows]


def write_manifest(root: Path, infos: list[ShardInfo], stats: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """A minimal valid ``dataset.json`` with consistent accounting (some planted read/probe drops)."""
    per_source: dict[str, Any] = {}
    steps = {name: {} for name in ("read", "probe", "text_length", "write")}
    planted = {}
    for j, r in enumerate(stats):
        src, out = r["source"], int(r["samples"])
        bad_json, unreadable, short = j % 3, (j * 7) % 11, (j * 5) % 13
        planted[src] = {"invalid_json": bad_json, "image_unreadable": unreadable, "text_too_short": short}
        n_in = out + bad_json + unreadable + short
        steps["read"][src] = {"input": n_in, "output": n_in - bad_json, "dropped": {"invalid_json": bad_json}}
        n = n_in - bad_json
        steps["probe"][src] = {"input": n, "output": n - unreadable, "dropped": {"image_unreadable": unreadable}}
        n -= unreadable
        steps["text_length"][src] = {"input": n, "output": n - short, "dropped": {"text_too_short": short}}
        n -= short
        steps["write"][src] = {"input": n, "output": n, "dropped": {}}
        dropped = {k: v for k, v in sorted(planted[src].items())}
        per_source[src] = {"input": n_in, "output": out, "dropped": dropped}
    manifest = DatasetManifest(
        name=PREFIX,
        kind="sft",
        tool_version=__version__,
        recipe={"kind": "build", "name": PREFIX},
        recipe_sha256="0" * 64,
        shards=infos,
        totals={
            "samples": sum(int(r["samples"]) for r in stats),
            "bytes": sum(i.bytes for i in infos),
            "shards": len(infos),
            "images": sum(int(r["images"]) for r in stats),
            "text_tokens": sum(int(r["text_tokens"]) for r in stats),
            "answer_tokens": sum(int(r["answer_tokens"]) for r in stats),
        },
        accounting={"steps": [{"step": k, "sources": v} for k, v in steps.items()], "sources": per_source},
    )
    manifest.write(root)
    return planted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--rows", type=int, default=100_000, help="rows per sidecar file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="directory for the temporary dataset (default: system temp dir)")
    args = ap.parse_args()
    total_rows = args.files * args.rows

    with tempfile.TemporaryDirectory(prefix="bench_audit-", dir=args.tmp) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        paths, infos = write_dataset(root, args.files, args.rows, args.seed)
        gen_s = time.perf_counter() - t
        disk = sum(p.stat().st_size for p in paths)
        print(f"generated {total_rows:,} sidecar rows in {args.files} files ({disk / 1e6:,.1f} MB) in {gen_s:.1f}s")

        reference = normalise(source_stats(paths))
        planted = write_manifest(root, infos, reference)
        load_before = loadavg()

        variants = {
            "duckdb": lambda: source_stats(paths),
            "pandas": lambda: pandas_stats(paths),
            "pyarrow": lambda: pyarrow_stats(paths),
            "audit": lambda: audit(root),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        outputs: dict[str, Any] = {}
        names = list(variants)
        for rnd in range(args.repeats):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                t = time.perf_counter()
                outputs[name] = variants[name]()
                times[name].append(time.perf_counter() - t)
                print(f"  repeat {rnd + 1} {name:<8} {times[name][-1]:6.2f}s", flush=True)

    # identical numbers
    checks = {
        "pandas_equals_duckdb": normalise(outputs["pandas"]) == normalise(outputs["duckdb"]),
        "pyarrow_equals_duckdb": normalise(outputs["pyarrow"]) == normalise(outputs["duckdb"]),
        "duckdb_row_count": sum(int(r["samples"]) for r in outputs["duckdb"]) == total_rows,
    }
    report = outputs["audit"]
    checks["audit_equals_duckdb"] = all(
        report["sources"][r["source"]][k] == r[k]
        for r in normalise(outputs["duckdb"])
        for k in ("samples", "images", "qa_pairs", "text_tokens", "answer_tokens", "bytes")
    )
    checks["audit_drops_match_manifest"] = all(
        report["sources"][s]["dropped"] == {k: v for k, v in sorted(d.items())} for s, d in planted.items()
    )
    checks["audit_mix_pct_sums_to_100"] = abs(sum(s["mix_pct"] for s in report["sources"].values()) - 100) < 0.1

    med = {k: median(v) for k, v in times.items()}
    doc: dict[str, Any] = {
        "benchmark": "bench_audit",
        "description": "per-source sidecar statistics: curation.report.audit.source_stats (DuckDB) vs pandas",
        "params": {
            "files": args.files,
            "rows_per_file": args.rows,
            "total_rows": total_rows,
            "sources": N_SOURCES,
            "repeats": args.repeats,
            "parquet_bytes": disk,
            "generate_s": round(gen_s, 2),
            "loadavg_before": load_before,
        },
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "rows_per_s": {k: round(total_rows / v) for k, v in med.items()},
        "ratio_pandas_over_duckdb": round(med["pandas"] / med["duckdb"], 2),
        "ratio_pyarrow_over_duckdb": round(med["pyarrow"] / med["duckdb"], 2),
        "target": {
            "metric": "duckdb median seconds",
            "max_s": TARGET_DUCKDB_S,
            "met": med["duckdb"] <= TARGET_DUCKDB_S,
        },
        "checks": checks,
        "per_source": normalise(outputs["duckdb"]),
        "environment": environment(),
    }
    path = write_result("bench_audit", doc)
    for k in names:
        print(f"{k:<8} median {med[k]:6.2f}s  {total_rows / med[k]:12,.0f} rows/s")
    print(
        f"pandas/duckdb: {doc['ratio_pandas_over_duckdb']:.2f}x; duckdb target <= {TARGET_DUCKDB_S}s: "
        f"{'MET' if doc['target']['met'] else 'NOT MET'}"
    )
    print(f"checks: {checks}")
    print(f"results: {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
