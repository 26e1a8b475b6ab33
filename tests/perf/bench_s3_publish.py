"""Publishing a finished build to an S3-compatible store versus a bare s3fs upload loop of the same files.

A real build (the demo recipe over generated inputs, ``--captions`` caption rows with larger images, shards of
``--shard-samples`` samples) is made once in a temporary directory. Then, against moto's server on loopback
(``tests/s3_server.py``), interleaved over ``--rounds`` rounds (order rotated), each into an emptied prefix:

- ``bare``: ``s3fs.S3FileSystem().put_file(local, remote)`` for every file of the build, in the same order;
- ``ours``: ``curation.storage.publish.publish(store, build)``: the publish order (sidecar, stats, tar per shard,
  ..., dataset.json last), one listing, the sha256 of each file in its metadata (the manifest's hashes where it
  has them, else read), and the check that a multipart upload arrived.

Reported: median seconds, MB/s and ``ratio_ours_over_bare`` (throughput: bare time / ours time) against the
target (>= 0.9). Results: ``tests/perf/results/bench_s3_publish.json``.

Run: ``python tests/perf/bench_s3_publish.py [--captions 1500] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from _common import environment, loadavg, median, write_result  # noqa: E402

from curation.build.runner import build  # noqa: E402
from curation.cli.demo import make_demo_inputs  # noqa: E402
from curation.recipe import load_recipe  # noqa: E402
from curation.storage.publish import publish, publish_order  # noqa: E402
from curation.storage.store import Store  # noqa: E402
from curation.storage.urls import parse_url  # noqa: E402
from tests.s3_server import BUCKET, start_moto  # noqa: E402

TARGET_RATIO = 0.9


def make_build(tmp: Path, captions: int, shard_samples: int) -> Path:
    inputs = tmp / "inputs"
    make_demo_inputs(inputs, n_captions=captions, n_conversations=captions // 4)
    spec = load_recipe(
        "demo",
        [
            f"sources.captions.path={inputs / 'captions.jsonl'}",
            f"sources.captions.image_root={inputs / 'images'}",
            f"sources.conversations.path={inputs / 'conversations.parquet'}",
            f"output.max_samples_per_shard={shard_samples}",
        ],
    )
    out = tmp / "build"
    build(spec, out, workers=2, progress=False)
    return out


def empty(store: Store) -> None:
    keys = list(store.list())
    if keys:
        store.delete(keys)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=1500)
    ap.add_argument("--shard-samples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmp", type=Path, default=None)
    args = ap.parse_args()
    load_before = loadavg()
    server = start_moto()
    try:
        for name, value in server.env().items():
            if name.startswith("AWS_"):
                os.environ[name] = value
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            out = make_build(Path(tmp), args.captions, args.shard_samples)
            files = publish_order(out)
            nbytes = sum((out / f).stat().st_size for f in files)
            import s3fs

            bare_fs = s3fs.S3FileSystem(skip_instance_cache=True)
            stores = {v: Store(parse_url(f"s3://{BUCKET}/bench-{v}")) for v in ("ours", "bare")}

            def run_bare() -> None:
                for f in files:
                    bare_fs.put_file(str(out / f), f"{BUCKET}/bench-bare/{f}")

            def run_ours() -> None:
                publish(stores["ours"], out)

            runs = {"bare": run_bare, "ours": run_ours}
            times: dict[str, list[float]] = {v: [] for v in runs}
            for v, fn in runs.items():  # untimed warm-up: connections, imports
                empty(stores[v])
                fn()
            order = list(runs)
            for r in range(args.rounds):
                for v in order[r % 2 :] + order[: r % 2]:
                    empty(stores[v])
                    t = time.perf_counter()
                    runs[v]()
                    times[v].append(time.perf_counter() - t)
            uploaded = stores["ours"].list()
            assert sorted(uploaded) == sorted(files), "ours published other objects than the build's files"
            med = {v: median(ts) for v, ts in times.items()}
            ratio = med["bare"] / med["ours"]
            result = {
                "what": "curation.storage.publish.publish vs a bare s3fs put_file loop, moto server on loopback",
                "parameters": vars(args) | {"tmp": str(args.tmp) if args.tmp else None},
                "files": len(files),
                "bytes": nbytes,
                "seconds": times,
                "median_seconds": med,
                "mb_per_s": {v: round(nbytes / 1e6 / med[v], 2) for v in med},
                "ratio_ours_over_bare": round(ratio, 3),
                "target": f">= {TARGET_RATIO}",
                "target_met": ratio >= TARGET_RATIO,
                "loadavg_before": load_before,
                "environment": environment(),
            }
            path = write_result("bench_s3_publish", result)
            print(
                f"{len(files)} files, {nbytes / 1e6:.1f} MB: bare {med['bare']:.2f}s, ours {med['ours']:.2f}s, "
                f"ratio {ratio:.3f} (target >= {TARGET_RATIO}): {path}"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
