"""Benchmark: token counting for the sidecars, the regex default versus a real ``tokenizer.json``.

Generates ``--samples`` single-turn QA samples (default 25,000: 50,000 texts, questions and answers), words
drawn from a 2,000-word vocabulary with some accented, CJK and emoji words; 20% of the questions are one of
8 templates ("Describe the image.", ...), as in captioning and OCR sets. A byte-level BPE tokenizer
(``--vocab-size`` 4,000: rarer words split into pieces) is trained on them offline with ``tokenizers`` and
saved as ``tokenizer.json``.

Timed (interleaved, ``--repeats`` times each, median reported; every counter is loaded fresh, untimed, before
each run; loading is timed separately). ``encode_batch_fast`` runs on all cores (rayon):
on a shared machine the batch variants vary most.

- ``regex``:         ``count_tokens`` over the 50,000 texts, one call each.
- ``json_single``:   ``make_token_counter("tokenizer_json", path)``, one call per text.
- ``json_batch``:    the same counter's ``count_batch`` over all 50,000 texts at once.
- ``writer_regex``, ``writer_json``: what ``ShardWriter.write`` does per sample: ``count_record`` (each of the
  sample's texts counted once, the answers' share taken from those counts).
- ``raw_encode``, ``raw_encode_batch`` (informational): ``tokenizers.Tokenizer.encode`` per text and
  ``encode_batch_fast`` over all texts, without our wrapper.

All tokenizer variants give identical totals (checked). Reported as texts/s and as ratios. Results go to
``tests/perf/results/tokens.json``.

Run: ``python tests/perf/bench_tokens.py [--samples 25000] [--repeats 5] [--vocab-size 4000]``
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tokenizers
from _common import environment, loadavg, median, write_result
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from schemas import SftRecord, Turn
from shards import tokens
from shards.tokens import count_record, count_tokens, make_token_counter

TEMPLATES = [
    "Describe the image.",
    "What is written in the image?",
    "Transcribe the text of this page.",
    "What is shown in this chart?",
    "Answer the question using a single word or phrase.",
    "What color is the object?",
    "How many people are in the picture?",
    "Convert this screenshot to HTML.",
]
EXTRA_WORDS = ["très", "naïve", "façade", "数学题", "等于几", "答案", "Привет", "мир", "🐱", "🚗", "Ærø", "ß"]


def make_samples(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(2000)] + EXTRA_WORDS
    weights = [1.0 / (i + 1) for i in range(len(vocab))]  # Zipf-ish word frequencies

    def text(words: int, end: str) -> str:
        return " ".join(rng.choices(vocab, weights, k=words)) + end

    out = []
    for _ in range(n):
        q = rng.choice(TEMPLATES) if rng.random() < 0.2 else text(rng.randint(4, 20), "?")
        a = text(max(1, int(rng.gammavariate(2.0, 15.0))), rng.choice([".", "!", ""]))
        out.append((q, a))
    return out


def train_tokenizer(samples: list[tuple[str, str]], vocab_size: int, path: Path) -> float:
    started = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator((t for qa in samples for t in qa), trainer)
    tok.save(str(path))
    return time.perf_counter() - started


def fresh_counter(path: Path) -> Any:
    tokens._CACHE.clear()
    return make_token_counter("tokenizer_json", str(path))


Timed = Callable[[], int]


def variants(path: Path, samples: list[tuple[str, str]]) -> dict[str, Callable[[], Timed]]:
    """name -> a preparation (untimed: loads a fresh counter) returning the timed call."""
    texts = [t for qa in samples for t in qa]
    raw = Tokenizer.from_file(str(path))

    def writer(counter: Any) -> int:
        total = 0
        for q, a in samples:
            text_tokens, answer_tokens = count_record(
                counter,
                SftRecord.model_construct(
                    key="k", source="s", meta={}, images=[], turns=[Turn.model_construct(user=q, assistant=a)]
                ),
            )
            total += text_tokens + answer_tokens
        return total

    def json_single() -> Timed:
        counter = fresh_counter(path)
        return lambda: sum(counter(t) for t in texts)

    def json_batch() -> Timed:
        counter = fresh_counter(path)
        return lambda: sum(counter.count_batch(texts))

    def writer_json() -> Timed:
        counter = fresh_counter(path)
        return lambda: writer(counter)

    return {
        "regex": lambda: lambda: sum(count_tokens(t) for t in texts),
        "json_single": json_single,
        "json_batch": json_batch,
        "writer_regex": lambda: lambda: writer(count_tokens),
        "writer_json": writer_json,
        "raw_encode": lambda: lambda: sum(len(raw.encode(t, add_special_tokens=False)) for t in texts),
        "raw_encode_batch": lambda: lambda: sum(len(e) for e in raw.encode_batch_fast(texts, add_special_tokens=False)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=25_000, help="QA samples (two texts each)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab-size", type=int, default=4_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, default=None, help="directory for the generated tokenizer.json")
    args = ap.parse_args()
    load_before = loadavg()
    samples = make_samples(args.samples, args.seed)
    n_texts = 2 * len(samples)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "tokenizer.json"
        train_s = train_tokenizer(samples, args.vocab_size, path)
        loads = []
        for _ in range(args.repeats):
            tokens._CACHE.clear()
            started = time.perf_counter()
            make_token_counter("tokenizer_json", str(path))
            loads.append(time.perf_counter() - started)
        runs = variants(path, samples)
        for prepare in runs.values():  # warm-up (untimed)
            prepare()()
        times: dict[str, list[float]] = {name: [] for name in runs}
        totals: dict[str, int] = {}
        names = list(runs)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                timed = runs[name]()
                started = time.perf_counter()
                totals[name] = timed()
                times[name].append(time.perf_counter() - started)
        answers = [a for _, a in samples]
        answers_json = sum(
            len(e) for e in Tokenizer.from_file(str(path)).encode_batch(answers, add_special_tokens=False)
        )
    json_names = ("json_single", "json_batch", "raw_encode", "raw_encode_batch")
    checks = {
        "tokenizer_totals_identical": len({totals[k] for k in json_names}) == 1,
        "writer_json_is_texts_plus_answers": totals["writer_json"] == totals["json_single"] + answers_json,
        "writer_regex_is_texts_plus_answers": totals["writer_regex"]
        == totals["regex"] + sum(count_tokens(a) for a in answers),
    }
    med = {k: median(v) for k, v in times.items()}
    # The writer variants count 3 texts per sample (the answer twice); rates are per distinct text.
    rate = {k: round(n_texts / v) for k, v in med.items()}
    ratios = {
        "json_batch_over_json_single": round(med["json_single"] / med["json_batch"], 2),
        "regex_over_json_single": round(med["json_single"] / med["regex"], 2),
        "regex_over_json_batch": round(med["json_batch"] / med["regex"], 2),
        "writer_regex_over_writer_json": round(med["writer_json"] / med["writer_regex"], 2),
        "json_single_over_raw_encode": round(med["raw_encode"] / med["json_single"], 2),
        "json_batch_over_raw_encode_batch": round(med["raw_encode_batch"] / med["json_batch"], 2),
    }
    result = {
        "benchmark": "tokens",
        "params": vars(args) | {"tmp": str(args.tmp) if args.tmp else None, "texts": n_texts},
        "tokenizer": {
            "model": "byte-level BPE",
            "tokenizers": tokenizers.__version__,
            "parallelism_env": {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")},
            "train_s": round(train_s, 2),
            "load_s": round(median(loads), 4),
        },
        "totals": totals,
        "tokens_per_text": {
            "regex": round(totals["regex"] / n_texts, 1),
            "json": round(totals["json_batch"] / n_texts, 1),
        },
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "best_s": {k: round(min(v), 4) for k, v in times.items()},  # the least disturbed run (shared machines)
        "texts_per_s": rate,
        "ratios": ratios,
        "checks": checks,
        "loadavg_before": load_before,
        "environment": environment(),
    }
    out = write_result("tokens", result)
    per_text = result["tokens_per_text"]
    print(f"{n_texts:,} texts; tokens per text: regex {per_text['regex']}, tokenizer.json {per_text['json']}")
    for k in runs:
        print(f"  {k:17s} {med[k]:7.3f} s  {rate[k]:>10,} texts/s")
    for k, v in ratios.items():
        print(f"  {k:34s} {v:.2f}x")
    print(f"checks: {checks}\nwrote {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
