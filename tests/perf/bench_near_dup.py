"""Benchmark: near-duplicate detection (``curation.dedup``): multi-index hashing against brute force.

Images: ``--n`` (200,000) random 64-bit hashes of which ~5% are planted near copies (1-4 bits flipped) of an
earlier hash, one hash per sample. Timed (interleaved, ``--repeats`` times each, median reported):

- ``greedy_mih``: ``greedy_image_dedup(all n, --max-distance)`` (multi-index hashing);
- ``all_pairs_subset``: ``all_pairs_image_dedup`` (numpy brute force) on the first ``--subset`` (20,000)
  samples, extrapolated quadratically to ``n``: ``x (n / subset)^2``.

Checks (the script exits 1 if one fails): both give identical results on the subset; every sample reported
as a duplicate is a planted copy (random 64-bit hashes are never within 4 bits) and every planted copy of a
kept sample is found. Informational: both methods on the subset at other distances (where MIH stops paying:
chunks get narrow, candidate lists long), and with ``--brute-force-full`` the real brute force on all ``n``.

Throughput: ``image_hash`` (phash and dhash) over ``--images`` (500) distinct 512x512 JPEGs, images/s, next to
plain ``imagehash.phash(Image.open(...))`` (full decode); ``minhash_signature`` and ``greedy_text_dedup``
(threshold 0.7) over ``--texts`` (20,000) synthetic QA texts with ~5% planted one-word edits, texts/s, and
how often LSH agrees with an exhaustive (no LSH) greedy pass on the first ``--text-subset`` (5,000).

Results go to ``tests/perf/results/near_dup.json``.

Run: ``python tests/perf/bench_near_dup.py [--n 200000] [--subset 20000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from importlib import metadata
from typing import Any

import imagehash
import numpy as np
from _common import WORDS, environment, loadavg, median, write_result
from PIL import Image, ImageDraw

from curation.dedup.hashing import image_hash
from curation.dedup.index import all_pairs_image_dedup, greedy_image_dedup
from curation.dedup.minhash import greedy_text_dedup, minhash_signature, shingles

TARGET_GREEDY_S = 10.0  # "seconds, not minutes" for 200k hashes at max_distance 4
PLANTED_SHARE = 0.05
TEXT_THRESHOLD = 0.7


def planted_hashes(n: int, seed: int) -> tuple[list[tuple[int]], np.ndarray, np.ndarray]:
    """``n`` one-image samples: random hashes, ~5% replaced by an earlier hash with 1-4 bits flipped.

    Returns the samples, the planted indexes and their sources (both ascending by index)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 1 << 64, size=n, dtype=np.uint64)
    planted = np.sort(rng.choice(np.arange(1, n), size=int(n * PLANTED_SHARE), replace=False))
    sources = (rng.random(len(planted)) * planted).astype(np.int64)  # uniform over the earlier samples
    flips = rng.integers(1, 5, size=len(planted))
    for i, src, k in zip(planted, sources, flips, strict=True):  # ascending: a source's own copy is final
        mask = np.uint64(0)
        for bit in rng.choice(64, size=int(k), replace=False):
            mask |= np.uint64(1) << np.uint64(bit)
        hashes[i] = hashes[src] ^ mask
    return [(int(h),) for h in hashes], planted, sources


def check_planted(result: list[int], planted: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
    res = np.asarray(result)
    is_planted = np.zeros(len(res), dtype=bool)
    is_planted[planted] = True
    kept_source = res[sources] < 0
    return {
        "duplicates": int((res >= 0).sum()),
        "planted": len(planted),
        "planted_found": int((res[planted] >= 0).sum()),
        "planted_of_kept_found": int((res[planted[kept_source]] >= 0).sum()),
        "planted_of_kept": int(kept_source.sum()),
        "false_positives": int(((res >= 0) & ~is_planted).sum()),
    }


def photo_jpeg(seed: int, size: int = 512) -> bytes:
    """A distinct photo-ish 512x512 JPEG: smooth colour field, a few shapes, grain."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y, r = (int(v) for v in rng.integers(0, size, 3))
        draw.ellipse(
            (x - r // 3, y - r // 3, x + r // 3, y + r // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    arr = np.clip(np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=85)
    return out.getvalue()


def qa_texts(n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Synthetic QA texts (question 8-15 words, answer 15-40), ~5% planted copies of an earlier text with
    one word replaced. Returns the texts, the planted indexes and their sources."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    texts: list[str] = []
    planted, sources = [], []
    for i in range(n):
        if i and rng.random() < PLANTED_SHARE:
            src = int(rng.integers(0, i))
            tokens = texts[src].split(" ")
            pos = int(rng.integers(0, len(tokens)))
            tokens[pos] = "replaced" if tokens[pos] != "replaced" else "changed"
            texts.append(" ".join(tokens))
            planted.append(i)
            sources.append(src)
            continue
        q = " ".join(rng.choice(words, int(rng.integers(8, 16))))
        a = " ".join(rng.choice(words, int(rng.integers(15, 41))))
        texts.append(f"Question: {q}? Answer: {a}.")
    return texts, np.array(planted, dtype=np.int64), np.array(sources, dtype=np.int64)


def exhaustive_text_dedup(signatures: list[np.ndarray], threshold: float) -> list[int]:
    """``greedy_text_dedup`` without LSH: every kept signature checked (numpy), the reference for recall."""
    stacked = np.stack(signatures)
    kept: list[int] = []
    result = []
    for i, sig in enumerate(stacked):
        hits = np.flatnonzero((stacked[kept] == sig).mean(axis=1) >= threshold) if kept else []
        if len(hits):
            result.append(kept[int(hits[0])])
        else:
            kept.append(i)
            result.append(-1)
    return result


def timed(fn, *args) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def bench_images(args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    samples, planted, sources = planted_hashes(args.n, args.seed)
    subset = samples[: args.subset]
    print(f"generated {args.n:,} hashes ({len(planted):,} planted near copies) in {time.perf_counter() - t:.1f}s")
    variants = {
        "greedy_mih": lambda: greedy_image_dedup(samples, args.max_distance),
        "all_pairs_subset": lambda: all_pairs_image_dedup(subset, args.max_distance),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, list[int]] = {}
    names = list(variants)
    for rnd in range(args.repeats):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            seconds, outputs[name] = timed(variants[name])
            times[name].append(seconds)
            print(f"  repeat {rnd + 1} {name:<17} {seconds:7.2f}s", flush=True)
    med = {k: median(v) for k, v in times.items()}
    scale = (args.n / args.subset) ** 2
    extrapolated = med["all_pairs_subset"] * scale
    greedy_subset = greedy_image_dedup(subset, args.max_distance)
    planted_stats = check_planted(outputs["greedy_mih"], planted, sources)
    checks = {
        "subset_greedy_equals_all_pairs": greedy_subset == outputs["all_pairs_subset"],
        "subset_prefix_of_full_run": outputs["greedy_mih"][: args.subset] == greedy_subset,
        "no_false_positives": planted_stats["false_positives"] == 0,
        "planted_of_kept_all_found": planted_stats["planted_of_kept_found"] == planted_stats["planted_of_kept"],
    }
    by_distance = {}
    for r in args.distances:
        g_s, g = timed(greedy_image_dedup, subset, r)
        a_s, a = timed(all_pairs_image_dedup, subset, r)
        by_distance[str(r)] = {"greedy_mih_s": round(g_s, 4), "all_pairs_s": round(a_s, 4), "equal": g == a}
        checks[f"subset_equal_r{r}"] = g == a
        print(f"  subset r={r:<2} greedy_mih {g_s:6.2f}s  all_pairs {a_s:6.2f}s  equal={g == a}", flush=True)
    doc: dict[str, Any] = {
        "params": {"n": args.n, "subset": args.subset, "max_distance": args.max_distance, "repeats": args.repeats},
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "greedy_mih_hashes_per_s": round(args.n / med["greedy_mih"]),
        "all_pairs_extrapolated_s": round(extrapolated, 2),
        "extrapolation_factor": scale,
        "speedup_mih_over_all_pairs": round(extrapolated / med["greedy_mih"], 2),
        "planted": planted_stats,
        "subset_by_distance": by_distance,
        "target": {"metric": "greedy_mih median seconds", "max_s": TARGET_GREEDY_S},
        "checks": checks,
    }
    doc["target"]["met"] = med["greedy_mih"] <= TARGET_GREEDY_S
    if args.brute_force_full:
        seconds, full = timed(all_pairs_image_dedup, samples, args.max_distance)
        doc["all_pairs_full_s"] = round(seconds, 2)
        checks["full_all_pairs_equals_greedy"] = full == outputs["greedy_mih"]
        print(f"  all_pairs on all {args.n:,}: {seconds:.1f}s (extrapolated {extrapolated:.1f}s)")
    return doc


def bench_hashing(args: argparse.Namespace) -> dict[str, Any]:
    jpegs = [photo_jpeg(args.seed * 100_000 + i) for i in range(args.images)]
    variants = {
        "phash": lambda: [image_hash(d, "phash") for d in jpegs],
        "dhash": lambda: [image_hash(d, "dhash") for d in jpegs],
        "imagehash_phash_full_decode": lambda: [imagehash.phash(Image.open(io.BytesIO(d))) for d in jpegs],
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, list] = {}
    names = list(variants)
    for rnd in range(args.repeats):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            seconds, outputs[name] = timed(variants[name])
            times[name].append(seconds)
    med = {k: median(v) for k, v in times.items()}
    full = np.array([int(str(h), 16) for h in outputs["imagehash_phash_full_decode"]], dtype=np.uint64)
    diff = np.bitwise_count(full ^ np.array(outputs["phash"], dtype=np.uint64))
    return {
        "params": {
            "images": args.images,
            "size": "512x512",
            "jpeg_bytes_mean": round(float(np.mean([len(d) for d in jpegs]))),
        },
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "images_per_s": {k: round(args.images / v, 1) for k, v in med.items()},
        "phash_vs_full_decode_bits": {"max": int(diff.max()), "mean": round(float(diff.mean()), 3)},
    }


def bench_text(args: argparse.Namespace) -> dict[str, Any]:
    texts, planted, sources = qa_texts(args.texts, args.seed)
    sig_times, dedup_times = [], []
    for _ in range(args.repeats):
        seconds, sigs = timed(lambda: [minhash_signature(t) for t in texts])
        sig_times.append(seconds)
        seconds, result = timed(greedy_text_dedup, sigs, TEXT_THRESHOLD)
        dedup_times.append(seconds)
    res = np.asarray(result)
    is_planted = np.zeros(len(res), dtype=bool)
    is_planted[planted] = True
    sig_s, dedup_s = median(sig_times), median(dedup_times)
    m = min(args.text_subset, len(texts))
    lsh_subset = greedy_text_dedup(sigs[:m], TEXT_THRESHOLD)
    exhaustive_s, exhaustive = timed(exhaustive_text_dedup, sigs[:m], TEXT_THRESHOLD)
    exact = []  # true shingle Jaccard of each planted copy and its source
    for i, src in zip(planted, sources, strict=True):
        a, b = shingles(texts[i], 3), shingles(texts[src], 3)
        exact.append(len(a & b) / len(a | b))
    exact_arr = np.array(exact)
    # a copy of a copy may be too far from the kept original: measure recall where the source was kept
    clear = planted[(exact_arr >= 0.8) & (res[sources] < 0)]
    return {
        "params": {"texts": args.texts, "threshold": TEXT_THRESHOLD, "num_perm": 128, "shingle_words": 3},
        "signature_s": [round(x, 4) for x in sig_times],
        "dedup_s": [round(x, 4) for x in dedup_times],
        "signature_texts_per_s": round(args.texts / sig_s),
        "dedup_texts_per_s": round(args.texts / dedup_s),
        "end_to_end_texts_per_s": round(args.texts / (sig_s + dedup_s)),
        "planted": len(planted),
        "planted_found": int((res[planted] >= 0).sum()),
        "exhaustive_subset": {
            "texts": m,
            "seconds": round(exhaustive_s, 2),
            "duplicates": sum(x >= 0 for x in exhaustive),
            "lsh_duplicates": sum(x >= 0 for x in lsh_subset),
            "samples_agreeing": sum(a == b for a, b in zip(lsh_subset, exhaustive, strict=True)),
        },
        "other_duplicates": int(((res >= 0) & ~is_planted).sum()),
        "planted_true_jaccard": {"min": round(float(exact_arr.min()), 3), "mean": round(float(exact_arr.mean()), 3)},
        "planted_of_kept_jaccard_ge_0.8": len(clear),
        "planted_of_kept_jaccard_ge_0.8_found": int((res[clear] >= 0).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="hashes for the image dedup")
    ap.add_argument("--subset", type=int, default=20_000, help="samples for the brute-force reference")
    ap.add_argument("--max-distance", type=int, default=4)
    ap.add_argument("--distances", default="0,2,4,6,8", help="informational subset comparison at these distances")
    ap.add_argument("--images", type=int, default=500, help="512x512 JPEGs for the hashing throughput")
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--text-subset", type=int, default=5_000, help="texts for the exhaustive (no LSH) reference")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--brute-force-full", action="store_true", help="also run the brute force on all --n")
    args = ap.parse_args()
    args.distances = [int(x) for x in args.distances.split(",") if x]
    load_before = loadavg()

    print("image hashes: greedy multi-index hashing vs all-pairs brute force")
    images = bench_images(args)
    print("image hashing throughput")
    hashing = bench_hashing(args)
    print("text minhash + LSH")
    text = bench_text(args)

    checks = images["checks"]
    doc: dict[str, Any] = {
        "benchmark": "near_dup",
        "description": "curation.dedup: greedy MIH image dedup vs brute force; hashing and MinHash throughput",
        "loadavg_before": load_before,
        "images": images,
        "hashing": hashing,
        "text": text,
        "checks": checks,
        "environment": environment()
        | {"versions_neardup": {d: metadata.version(d) for d in ("imagehash", "datasketch", "scipy")}},
    }
    path = write_result("near_dup", doc)
    med = images["median_s"]
    print(
        f"greedy_image_dedup {args.n:,} hashes r={args.max_distance}: {med['greedy_mih']:.2f}s "
        f"({images['greedy_mih_hashes_per_s']:,}/s); target <= {TARGET_GREEDY_S:.0f}s: "
        f"{'MET' if images['target']['met'] else 'NOT MET'}"
    )
    print(
        f"all_pairs_image_dedup {args.subset:,}: {med['all_pairs_subset']:.2f}s -> extrapolated to {args.n:,}: "
        f"{images['all_pairs_extrapolated_s']:.1f}s; speedup {images['speedup_mih_over_all_pairs']:.1f}x"
    )
    print(f"planted: {images['planted']}")
    ips = hashing["images_per_s"]
    print(
        f"image_hash 512x512 JPEG: phash {ips['phash']:,.0f}/s, dhash {ips['dhash']:,.0f}/s "
        f"(imagehash full decode {ips['imagehash_phash_full_decode']:,.0f}/s)"
    )
    print(
        f"text {args.texts:,}: signatures {text['signature_texts_per_s']:,}/s, dedup {text['dedup_texts_per_s']:,}/s, "
        f"end-to-end {text['end_to_end_texts_per_s']:,}/s; planted found {text['planted_found']}/{text['planted']}, "
        f"other duplicates {text['other_duplicates']} (copies of kept texts with true Jaccard >= 0.8: "
        f"{text['planted_of_kept_jaccard_ge_0.8_found']}/{text['planted_of_kept_jaccard_ge_0.8']} found)"
    )
    ex = text["exhaustive_subset"]
    print(
        f"text LSH vs exhaustive on {ex['texts']:,}: {ex['samples_agreeing']:,} samples agree, duplicates "
        f"{ex['lsh_duplicates']} vs {ex['duplicates']}"
    )
    print(f"checks: {checks}")
    print(f"results: {path}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
