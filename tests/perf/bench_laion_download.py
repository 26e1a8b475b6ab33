"""Benchmark: LAION download + convert (our build) versus bare img2dataset on the same loopback URLs.

A threaded HTTP server on 127.0.0.1 serves N distinct URLs (a pool of distinct JPEGs behind them). The
reference is one ``img2dataset.download`` call (webdataset output, same processes/threads/shard size);
ours is ``curation.build.runner.build`` of a ``laion`` source over metadata listing the same URLs (selection,
one img2dataset call per partition, conversion, our shard writer). Both run in this script, interleaved,
and the throughput ratio ours/bare is reported. Target: >= 0.9.

Run: ``python tests/perf/bench_laion_download.py [--urls 5000] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _common import environment, loadavg, median, noise_jpeg, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # same for both variants: no update check per process

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.sources.download.img2dataset import _fds_to

POOL: list[bytes] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1].split(".")[0])
        data = POOL[n % len(POOL)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def quiet():
    return _fds_to(Path(os.devnull))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    POOL.extend(noise_jpeg(seed, 20_000, size=(256, 192)) for seed in range(64))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/img/{i}.jpg" for i in range(args.urls)]
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench_dl_") as tmp:
        tmp = Path(tmp)
        (tmp / "meta").mkdir()
        pq.write_table(
            pa.table(
                {
                    "URL": urls,
                    "TEXT": [f"a photo of thing {i}" for i in range(args.urls)],
                    "WIDTH": [256] * args.urls,
                    "HEIGHT": [192] * args.urls,
                    "similarity": [0.35] * args.urls,
                }
            ),
            tmp / "meta" / "part-00000.parquet",
        )
        pq.write_table(
            pa.table({"url": urls, "caption": [f"a photo of thing {i}" for i in range(args.urls)]}),
            tmp / "urls.parquet",
        )
        load = loadavg()
        for r in range(args.rounds):
            for variant in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                out = tmp / f"{variant}-{r}"
                cache = tmp / f"cache-{r}"
                shutil.rmtree(cache, ignore_errors=True)
                t = time.perf_counter()
                if variant == "bare":
                    from img2dataset import download

                    with quiet():
                        download(
                            url_list=str(tmp / "urls.parquet"),
                            input_format="parquet",
                            url_col="url",
                            caption_col="caption",
                            output_format="webdataset",
                            output_folder=str(out),
                            processes_count=args.processes,
                            thread_count=args.threads,
                            number_sample_per_shard=args.per_shard,
                            resize_mode="no",
                            encode_format="jpg",
                            enable_wandb=False,
                            timeout=10,
                        )
                    counts["bare"] = sum(1 for _ in out.glob("*.jpg")) or sum(
                        pq.read_table(p).num_rows for p in out.glob("*.parquet")
                    )
                else:
                    recipe = {
                        "name": "bench",
                        "sources": [
                            {
                                "name": "laion",
                                "reader": "laion",
                                "path": str(tmp / "meta"),
                                "sizes": [args.urls],
                                "cache_dir": str(cache),
                                "filters": {"min_words": None},
                                "download": {
                                    "samples_per_shard": args.per_shard,
                                    "thread_count": args.threads,
                                    "resize_mode": "no",
                                },
                            }
                        ],
                        "output": {"kind": "pair"},
                    }
                    m = build(validate_recipe(recipe), out, workers=args.processes, progress=False).manifest
                    counts["ours"] = m.totals["samples"]
                times[variant].append(time.perf_counter() - t)
                print(f"round {r} {variant:5s} {times[variant][-1]:.2f}s", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    server.shutdown()
    med = {k: median(v) for k, v in times.items()}
    ratio = round(med["bare"] / med["ours"], 3)
    result = {
        "benchmark": "bench_laion_download",
        "params": {**vars(args), "loadavg_before": load},
        "seconds": times,
        "median_s": med,
        "urls_per_s": {k: round(args.urls / v, 1) for k, v in med.items()},
        "samples": counts,
        "ratio_ours_over_bare": ratio,
        "target": {"min": 0.9, "met": ratio >= 0.9 and counts.get("ours") == args.urls},
        "environment": environment(),
    }
    path = write_result("bench_laion_download", result)
    print(
        f"bare img2dataset {med['bare']:.2f}s, ours {med['ours']:.2f}s: ratio {ratio} (target >= 0.9: "
        f"{'MET' if result['target']['met'] else 'NOT MET'}); samples {counts}"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
