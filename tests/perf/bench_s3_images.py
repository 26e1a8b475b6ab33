"""Reading rows whose images are objects of a bucket (``image_root: s3://...``): a few rows made at once versus
one after the other.

The demo's captions (``--captions`` rows, one small image object each) are uploaded to moto's server on loopback
(``tests/s3_server.py``), behind a proxy that holds each request ``--latency`` seconds (a store's first-byte
latency; 0 measures moto alone). Each of the source's partitions is read through the jsonl reader, interleaved
over ``--rounds`` rounds (order rotated):

- ``one_at_a_time``: ``URL_IMAGE_FETCHES = 1``, the reader as it was (one GET after the other);
- ``ours``: the default, ``URL_IMAGE_FETCHES`` rows at once (``curation.sources.base.in_order``).

Both must give the same items. Reported: median seconds, rows/s and ``speedup`` (one_at_a_time / ours).
Results: ``tests/perf/results/bench_s3_images.json``.

Run: ``python tests/perf/bench_s3_images.py [--captions 400] [--latency 0.02] [--rounds 3]``
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

from curation.cli.demo import make_demo_inputs  # noqa: E402
from curation.recipe import load_recipe  # noqa: E402
from curation.sources import base, make_reader  # noqa: E402
from curation.storage.inputs import check_inputs  # noqa: E402
from tests.s3_server import BUCKET, ThrottlingProxy, start_moto  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=400)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    load_before = loadavg()
    server = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inputs = Path(tmp) / "inputs"
            make_demo_inputs(inputs, n_captions=args.captions, n_conversations=4)
            client = server.client()
            client.upload_file(str(inputs / "captions.jsonl"), BUCKET, "bench/captions.jsonl")
            for f in sorted((inputs / "images").iterdir()):
                client.upload_file(str(f), BUCKET, f"bench/images/{f.name}")
            with ThrottlingProxy(server.port, delay=args.latency) as proxy:
                for name, value in server.env(proxy.endpoint).items():
                    if name.startswith("AWS_"):
                        os.environ[name] = value
                recipe = load_recipe(
                    "demo",
                    [
                        f"sources.captions.path=s3://{BUCKET}/bench/captions.jsonl",
                        f"sources.captions.image_root=s3://{BUCKET}/bench/images",
                        f"sources.conversations.path={inputs / 'conversations.parquet'}",
                    ],
                )
                check_inputs(recipe)
                reader = make_reader(recipe.sources[0])
                parts = reader.plan()
                default = base.URL_IMAGE_FETCHES

                def read(at_once: int) -> list:
                    base.URL_IMAGE_FETCHES = at_once
                    try:
                        return [repr(item) for part in parts for item in reader.read(part)]
                    finally:
                        base.URL_IMAGE_FETCHES = default

                variants = {"one_at_a_time": 1, "ours": default}
                items = {v: read(n) for v, n in variants.items()}  # untimed warm-up: connections, imports
                assert items["ours"] == items["one_at_a_time"], "the items differ"
                times: dict[str, list[float]] = {v: [] for v in variants}
                order = list(variants)
                for r in range(args.rounds):
                    for v in order[r % 2 :] + order[: r % 2]:
                        t = time.perf_counter()
                        read(variants[v])
                        times[v].append(time.perf_counter() - t)
        med = {v: median(ts) for v, ts in times.items()}
        speedup = med["one_at_a_time"] / med["ours"]
        rows = len(items["ours"])
        result = {
            "what": "jsonl rows with image_root in a bucket (moto on loopback behind a latency proxy): "
            f"URL_IMAGE_FETCHES={default} vs 1",
            "parameters": vars(args),
            "rows": rows,
            "seconds": times,
            "median_seconds": med,
            "rows_per_s": {v: round(rows / med[v], 1) for v in med},
            "speedup": round(speedup, 2),
            "loadavg_before": load_before,
            "environment": environment(),
        }
        path = write_result("bench_s3_images", result)
        print(
            f"{rows} rows, latency {args.latency}s: one at a time {med['one_at_a_time']:.2f}s, "
            f"{default} at once {med['ours']:.2f}s, speedup {speedup:.2f}x: {path}"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
