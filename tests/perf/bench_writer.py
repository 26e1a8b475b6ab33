"""Benchmark: ``shards.ShardWriter`` versus a bare ``webdataset.TarWriter`` writing the same members.

20,000 ``pair`` records with ~50 KB JPEGs (a few distinct noise-ish images reused under distinct keys).
Records, tar members (``shards.codec.encode_record``) and image probes (``shards.probe_image``) are all
built before any timing. Variants, each writing 4 shards of 5,000 samples into a fresh directory:

- ``bare``:        ``webdataset.TarWriter(f, encoder=False)``, the members ``encode_record`` produces.
- ``ours``:        ``ShardWriter(dir, "bench", max_samples=5000)`` given the pre-probed ``infos``
                   (tar + sha256 of the tar + parquet sidecar + stats json + fsync + atomic renames).
- ``ours_probe``:  the same, but ``infos=None`` (ShardWriter probes each image itself).
- ``bare_fsync``:  ``bare`` plus an fsync per shard (informational: the durability ShardWriter pays for).
- ``bare_int_mtime``: ``bare`` with ``mtime=0`` (an int; informational). ``TarWriter`` stamps a float
                   mtime by default (``time.time()``); a float mtime makes ``tarfile`` add a PAX extended
                   header to every member. ShardWriter writes ustar headers itself (``shards/tarstream.py``).

After an untimed warm-up run of each variant, variants are interleaved over ``--rounds`` rounds (order
rotated each round); the output is deleted and ``os.sync()`` is called between runs (outside the timed
region). Before timing, a 200-record run of ``bare`` and ``ours`` checks that both tars hold the same member
names and bytes in the same order. Reported: median seconds, samples/s,
MB/s (payload = sum of member bytes, 1 MB = 10^6 bytes) and the ratio ours/bare; the target (ours >= 0.9x
bare) and whether it is met are recorded in ``tests/perf/results/bench_writer.json``.

Run: ``python tests/perf/bench_writer.py [--samples 20000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import webdataset as wds
from _common import WORDS, environment, loadavg, median, noise_jpeg, write_result

from schemas import PairRecord
from shards import ShardWriter, encode_record, probe_image

TARGET_RATIO = 0.9
MAX_SAMPLES = 5_000
IMAGE_BYTES = 50_000
DISTINCT_IMAGES = 8


def make_records(n: int) -> tuple[list[PairRecord], list[bytes]]:
    images = [noise_jpeg(seed, IMAGE_BYTES) for seed in range(DISTINCT_IMAGES)]
    records = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(8 + i % 17)]
        records.append(
            PairRecord(
                key=f"bench-{i:08d}",
                source=f"source{i % 4}",
                image=images[i % DISTINCT_IMAGES],
                caption=" ".join(words).capitalize() + ".",
                meta={"url": f"https://example.com/images/{i:08d}.jpg", "license": "CC-BY", "row": i},
            )
        )
    return records, images


def run_bare(out: Path, samples: list[dict[str, Any]], fsync: bool, mtime: int | None = None) -> None:
    for start in range(0, len(samples), MAX_SAMPLES):
        with open(out / f"bare-{start // MAX_SAMPLES:06d}.tar", "wb") as f:
            tar = wds.TarWriter(f, encoder=False) if mtime is None else wds.TarWriter(f, encoder=False, mtime=mtime)
            for sample in samples[start : start + MAX_SAMPLES]:
                tar.write(sample)
            tar.close()
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def run_ours(out: Path, records: list[PairRecord], infos: list[list[Any]] | None) -> None:
    with ShardWriter(out, "bench", max_samples=MAX_SAMPLES) as writer:
        if infos is None:
            for record in records:
                writer.write(record)
        else:
            for record, info in zip(records, infos, strict=True):
                writer.write(record, info)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path, "r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def check_same_members(tmp: Path, samples: list[dict[str, Any]], records: list[PairRecord], infos: Any) -> None:
    """Both writers put the same member names and bytes, in the same order, into a tar (untimed)."""
    a, b = tmp / "check-bare", tmp / "check-ours"
    a.mkdir()
    b.mkdir()
    run_bare(a, samples, fsync=False)
    run_ours(b, records, infos)
    if tar_members(a / "bare-000000.tar") != tar_members(b / "bench-000000.tar"):
        raise SystemExit("bare and ours tars hold different members: the comparison would be unfair")
    shutil.rmtree(a)
    shutil.rmtree(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--no-extra", action="store_true", help="skip the informational bare_fsync and bare_int_mtime variants"
    )
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run")
    ap.add_argument("--tmp", default=None, help="directory for the temporary output (default: system temp dir)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    records, images = make_records(args.samples)
    members = [encode_record(r) for r in records]
    samples = [{"__key__": r.key, **m} for r, m in zip(records, members, strict=True)]
    probed = {id(im): probe_image(im) for im in images}
    infos = [[probed[id(r.image)]] for r in records]
    payload = sum(len(v) for m in members for v in m.values())
    setup_s = time.perf_counter() - t0
    print(
        f"setup: {args.samples:,} records, {DISTINCT_IMAGES} distinct JPEGs of "
        f"{min(map(len, images)):,}-{max(map(len, images)):,} bytes, payload {payload / 1e6:,.1f} MB "
        f"({setup_s:.1f}s)",
        flush=True,
    )

    variants: dict[str, Callable[[Path], None]] = {
        "bare": lambda d: run_bare(d, samples, fsync=False),
        "ours": lambda d: run_ours(d, records, infos),
        "ours_probe": lambda d: run_ours(d, records, None),
    }
    if not args.no_extra:
        variants["bare_fsync"] = lambda d: run_bare(d, samples, fsync=True)
        variants["bare_int_mtime"] = lambda d: run_bare(d, samples, fsync=False, mtime=0)
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    disk: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench_writer-", dir=args.tmp) as tmp:
        check_same_members(Path(tmp), samples[:200], records[:200], infos[:200])
        load_before = loadavg()
        for name in names if args.warmup else []:  # untimed: page-cache and allocator warm-up
            out = Path(tmp) / f"warmup-{name}"
            out.mkdir()
            variants[name](out)
            shutil.rmtree(out)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                out = Path(tmp) / f"{name}-{rnd}"
                out.mkdir()
                os.sync()  # no dirty pages of an earlier run are flushed during this one
                t = time.perf_counter()
                variants[name](out)
                elapsed = time.perf_counter() - t
                times[name].append(elapsed)
                disk[name] = tree_bytes(out)
                shutil.rmtree(out)
                print(f"  round {rnd + 1} {name:<14} {elapsed:6.2f}s  {args.samples / elapsed:8,.0f} samples/s")

    # component costs (informational): the sha256 ShardWriter computes over every tar byte
    t = time.perf_counter()
    h = hashlib.sha256()
    for m in members:
        for v in m.values():
            h.update(v)
    sha_s = time.perf_counter() - t

    results: dict[str, Any] = {}
    for name in names:
        med = median(times[name])
        results[name] = {
            "seconds": [round(x, 4) for x in times[name]],
            "median_s": round(med, 4),
            "samples_per_s": round(args.samples / med, 1),
            "payload_mb_per_s": round(payload / med / 1e6, 1),
            "bytes_on_disk": disk[name],
        }
    ratio = results["bare"]["median_s"] / results["ours"]["median_s"]
    ratio_probe = results["bare"]["median_s"] / results["ours_probe"]["median_s"]
    doc: dict[str, Any] = {
        "benchmark": "bench_writer",
        "description": "ShardWriter (tar+sidecar+stats) vs bare webdataset.TarWriter, same members",
        "params": {
            "samples": args.samples,
            "rounds": args.rounds,
            "max_samples_per_shard": MAX_SAMPLES,
            "distinct_images": DISTINCT_IMAGES,
            "image_bytes": [len(im) for im in images],
            "payload_bytes": payload,
            "setup_s": round(setup_s, 2),
            "warmup": args.warmup,
            "loadavg_before": load_before,
        },
        "variants": results,
        "ratio_ours_over_bare": round(ratio, 3),
        "ratio_ours_probe_over_bare": round(ratio_probe, 3),
        "target": {"metric": "ratio_ours_over_bare (throughput)", "min": TARGET_RATIO, "met": ratio >= TARGET_RATIO},
        "components": {"sha256_of_payload_s": round(sha_s, 4)},
        "environment": environment(),
    }
    for extra in ("bare_fsync", "bare_int_mtime"):
        if extra in results:
            doc[f"ratio_ours_over_{extra}"] = round(results[extra]["median_s"] / results["ours"]["median_s"], 3)
    path = write_result("bench_writer", doc)

    print()
    for name in names:
        r = results[name]
        print(
            f"{name:<14} median {r['median_s']:6.2f}s  {r['samples_per_s']:8,.0f} samples/s  "
            f"{r['payload_mb_per_s']:7,.1f} MB/s"
        )
    print(
        f"ours/bare throughput ratio: {ratio:.3f} (target >= {TARGET_RATIO}: "
        f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}); ours_probe/bare: {ratio_probe:.3f}"
    )
    for extra in ("bare_fsync", "bare_int_mtime"):
        if f"ratio_ours_over_{extra}" in doc:
            print(f"ours/{extra}: {doc[f'ratio_ours_over_{extra}']:.3f} (informational)")
    print(f"sha256 over the payload alone: {sha_s:.2f}s")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
