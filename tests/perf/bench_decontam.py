"""Decontamination throughput: the ``decontaminate`` step against its own parts and against brute force.

Training samples: ``--n`` sft samples, each one 384x288 JPEG (random drawings) and 2 questions; a benchmark
of ``--bench`` images and questions (``images/`` + ``questions.jsonl``), with 2% of the training samples
planted (benchmark image re-encoded, or a benchmark question). Measured, in one process:

- ``hash_only``: ``image_hash`` of every training image (the floor: decontamination must hash each image);
- ``step``: the real ``Decontaminate`` record step (hash + multi-index lookup + question n-gram index);
- ``brute``: the same decisions by brute force (numpy Hamming distance to every benchmark hash, and every
  question compared with every benchmark question's n-grams);
- ``build_ratio``: a real build with the step against the same build without it (samples/s).

Results: ``tests/perf/results/bench_decontam.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curation.build.runner import build  # noqa: E402
from curation.dedup.hashing import image_hash, to_unsigned  # noqa: E402
from curation.recipe import DecontaminateStep, validate_recipe  # noqa: E402
from curation.sample import Sample  # noqa: E402
from curation.steps.contract import StepContext  # noqa: E402
from curation.steps.decontaminate import Decontaminate, ngrams, prepare_benchmarks  # noqa: E402
from schemas import SftRecord, Turn  # noqa: E402
from tests.sft_data import VARIANTS, answer, drawing, encode, question  # noqa: E402

SIZE = (384, 288)


def make_inputs(root: Path, n: int, n_bench: int) -> tuple[Path, Path, list[dict]]:
    rng = random.Random(0)
    bench = root / "bench"
    (bench / "images").mkdir(parents=True)
    bench_images = [drawing(10_000_000 + i, SIZE) for i in range(n_bench)]
    bench_questions = [question(rng, 12) for _ in range(n_bench)]
    for i, im in enumerate(bench_images):
        (bench / "images" / f"{i}.jpg").write_bytes(encode(im, "JPEG", 90))
    (bench / "questions.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in bench_questions))
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(n):
        if i % 100 == 0:
            data = VARIANTS["reencoded"](bench_images[i % n_bench])
        else:
            data = encode(drawing(i, SIZE), "JPEG", 90)
        (images / f"{i}.jpg").write_bytes(data)
        q1 = bench_questions[(i * 7) % n_bench] if i % 100 == 50 else question(rng)
        rows.append(
            {
                "id": f"s{i}",
                "images": [f"{i}.jpg"],
                "turns": [{"user": q1, "assistant": answer(rng)}, {"user": question(rng), "assistant": answer(rng)}],
            }
        )
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return train, bench, rows


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--bench", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", type=Path, default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        train, bench, rows = make_inputs(root, args.n, args.bench)
        cfg = DecontaminateStep.model_validate(
            {
                "step": "decontaminate",
                "benchmarks": [
                    {"name": "bench", "images": str(bench / "images"), "questions": str(bench / "questions.jsonl")}
                ],
            }
        )
        work = root / "work"
        t_prep = time.perf_counter()
        prepare_benchmarks(cfg, "decontaminate", work)
        prep_seconds = time.perf_counter() - t_prep
        records = [
            SftRecord.model_construct(
                key=r["id"],
                source="train",
                meta={},
                images=[(root / "images" / r["images"][0]).read_bytes()],
                turns=[Turn.model_construct(**t) for t in r["turns"]],
            )
            for r in rows
        ]

        def hash_only() -> int:
            return sum(1 for rec in records for b in rec.images if image_hash(b) >= 0)

        def step() -> list[str]:
            s = Decontaminate(cfg, StepContext("decontaminate", work))
            out = []
            for rec in records:
                res = s(Sample(rec, ""))
                out.append(res if isinstance(res, str) else "")
            return out

        bench_hashes = np.array(
            [to_unsigned(image_hash(p.read_bytes())) for p in sorted((bench / "images").iterdir())], dtype=np.uint64
        )
        bench_grams = [ngrams(json.loads(line)["question"], 3)[1] for line in (bench / "questions.jsonl").open()]

        def brute() -> list[str]:
            out = []
            for rec in records:
                h = np.uint64(image_hash(rec.images[0]))
                if (np.bitwise_count(bench_hashes ^ h) <= cfg.max_distance).any():
                    out.append("image")
                    continue
                hit = ""
                for t in rec.turns:
                    words, grams = ngrams(t.user, 3)
                    if words >= cfg.min_question_words and any(
                        len(grams & g) / len(g) >= cfg.min_overlap for g in bench_grams if g
                    ):
                        hit = "question"
                out.append(hit)
            return out

        results = {}
        t_hash, _ = timed(hash_only, args.repeats)
        t_step, found = timed(step, args.repeats)
        t_brute, brute_found = timed(brute, args.repeats)
        same = [bool(a) for a in found] == [bool(b) for b in brute_found]
        planted_ids = {i for i in range(args.n) if i % 100 in (0, 50)}
        extra = [f for i, f in enumerate(found) if f and i not in planted_ids]
        results["step"] = {
            "seconds": round(t_step, 3),
            "samples_per_s": round(args.n / t_step, 1),
            "dropped": sum(1 for f in found if f),
            "planted": len(planted_ids),
            "planted_found": sum(1 for i in planted_ids if found[i]),
            "unplanted_dropped_by_reason": {r: extra.count(r) for r in sorted(set(extra))},
            "same_decisions_as_brute_force": same,
        }
        results["hash_only"] = {"seconds": round(t_hash, 3), "images_per_s": round(args.n / t_hash, 1)}
        results["brute"] = {"seconds": round(t_brute, 3), "samples_per_s": round(args.n / t_brute, 1)}
        results["prepare_benchmark_seconds"] = round(prep_seconds, 3)

        def run_build(with_step: bool, out: Path) -> float:
            recipe = {
                "name": "b",
                "sources": [
                    {
                        "name": "train",
                        "reader": "jsonl",
                        "record": "sft",
                        "path": str(train),
                        "image_root": str(root / "images"),
                        "fields": {"key": "id"},
                        "partition_size": 1000,
                    }
                ],
                "steps": [cfg.model_dump(mode="json")] if with_step else [],
                "output": {"kind": "sft"},
            }
            t = time.perf_counter()
            build(validate_recipe(recipe), out, workers=2, progress=False)
            return time.perf_counter() - t

        builds = {"with": [], "without": []}
        for r in range(args.repeats):
            builds["without"].append(run_build(False, root / f"plain{r}"))
            builds["with"].append(run_build(True, root / f"decon{r}"))
        t_with, t_without = float(np.median(builds["with"])), float(np.median(builds["without"]))
    report = {
        "benchmark": "bench_decontam",
        "params": {"n": args.n, "bench_images": args.bench, "bench_questions": args.bench, "repeats": args.repeats},
        "results": results,
        "ratios": {
            "step_vs_hash_only": round(t_hash / t_step, 3),
            "step_speedup_vs_brute_force": round(t_brute / t_step, 2),
            "build_with_step_vs_without": round(t_without / t_with, 3),
        },
        "builds_seconds": {"with_decontaminate": round(t_with, 3), "without": round(t_without, 3)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out = ROOT / "tests" / "perf" / "results" / "bench_decontam.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    r = report["ratios"]
    print(
        f"decontaminate: {results['step']['samples_per_s']:,.0f} samples/s "
        f"({results['step']['planted_found']}/{len(planted_ids)} planted found, "
        f"{sum(results['step']['unplanted_dropped_by_reason'].values())} unplanted matches, "
        f"same as brute force: {same}); "
        f"step/hash-only {r['step_vs_hash_only']:.2f}x; {r['step_speedup_vs_brute_force']:.1f}x faster than brute "
        f"force; build with/without {r['build_with_step_vs_without']:.2f}x -> {out}"
    )


if __name__ == "__main__":
    main()
