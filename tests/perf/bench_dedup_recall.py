"""Benchmark: precision and recall of the near-duplicate steps on planted copies, to choose their defaults.

Not a timing benchmark: a quality measurement (timings are recorded only as a guide).

**Text** (``curation.dedup.minhash``): ``--texts`` (3,000) synthetic originals of 40-200 words (conversations
with templated question starters and answer openers, and plain paragraphs) drawn from a Zipf-Mandelbrot
vocabulary of ``--vocab`` (5,000) words whose top ranks are real English function words, so unrelated texts
share some 3-word shingles as real text does. Planted copies: for each true-Jaccard bin of the 3-word-shingle
sets (``shingles(text, 3)``, the sets the signatures are built from, compared exactly with Python sets),
``--copies-per-bin`` (300) copies of random originals made by word substitutions, insertions and deletions;
each candidate copy is kept in the bin its true Jaccard with its original really lands in (until that bin is
full). Also ``--template-groups`` (60) groups of 5 *template siblings*: distinct texts sharing a boilerplate
question of 20-60 words (true Jaccard between siblings mostly 0.1-0.6), which no configuration should drop;
they are scored apart (column "siblings dropped") and left out of precision. Order: all originals, the
siblings, then all copies in a seeded random order, so every copy comes after its original (kept-first: the
original is the one kept). ``greedy_text_dedup`` runs once per configuration on
the whole set: threshold x verify with the default banding (``banding_for``), DataTrove-like 14 bands x 8
rows without verification, and the verified thresholds with 20 x 6. Reference rows ``no LSH, est >= t``: the
share of copies whose MinHash estimate against their own original reaches ``t`` (what a verified search with
a perfect candidate generator would find).

**Images** (``curation.dedup.hashing`` / ``index``): ``--images`` (1,000) distinct synthetic photo-like JPEGs
(gradient + low-frequency colour field, shapes, blur, grain; 256-512 px per side) and one copy per original
per transform: JPEG re-encode at quality 60, resize to 50%, 5% crop (2.5% off each side), 10% crop (5% off
each side), a caption in an opaque box covering ~10% of the image, rotation by 2 degrees (either way, black
corners), brightness +10%, and a horizontal flip (not expected to match: reported apart, left out of the
overall recall). Order: originals, then the copies shuffled. ``greedy_image_dedup`` per hash (phash, dhash)
and ``--distances`` (4, 6, 8, 10, 12). Beside it, the Hamming distance of every copy to its original, and
the pairs of distinct originals within each distance (the false-positive rate per pair, which is what grows
with the dataset: n^2 / 2 pairs).

Metrics, per configuration, on the whole set: **recall** = share of planted copies dropped and matched to
their original or to another copy of the same original; **precision** = share of all drops whose match is of
the same family (original + its copies); a drop pairing unrelated items is a false positive (an original
dropped is always one: the originals are all distinct). Also **families lost**: originals none of whose family
is kept (content lost, rather than a copy dropped onto the wrong kept sample; a kept flipped copy does not
count as keeping its image). The text table marks with ✓ the
configurations with recall >= 90% in every true-Jaccard bin >= 0.8 and precision >= 99%.

Results go to ``tests/perf/results/bench_dedup_recall.json``; both tables are printed as markdown.

Run: ``python tests/perf/bench_dedup_recall.py [--texts 3000] [--images 1000] [--seed 0] [--quick]``
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from importlib import metadata
from typing import Any

import numpy as np
from _common import WORDS, environment, loadavg, write_result
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from curation.dedup.hashing import image_hash, to_unsigned
from curation.dedup.index import greedy_image_dedup
from curation.dedup.lsh import Banding, banding_for
from curation.dedup.minhash import greedy_text_dedup, minhash_signature, shingles

NUM_PERM = 128
SHINGLE_WORDS = 3
BINS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0)]
HIGH_J = 0.8  # the recall target is stated for copies with a true Jaccard >= this
TARGET_RECALL, TARGET_PRECISION = 0.90, 0.99
TEXT_THRESHOLDS = (0.7, 0.75, 0.8)
TEMPLATE_GROUP_SIZE = 5
CURRENT_TEXT = "t=0.8 verify 14x9"  # the step's default today
TRANSFORMS = ("jpeg_q60", "resize_50", "crop_5", "crop_10", "text_overlay", "rotate_2", "bright_10", "hflip")
NOT_EXPECTED = ("hflip",)
HASHES = ("phash", "dhash")
CURRENT_IMAGE = ("phash", 4)

FUNCTION_WORDS_TEXT = (
    "the of and to a in is that it for was on are as with his they at be this from have or by one had not but "
    "what all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first been its "
    "who now people my made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man too any day same "
    "right look think also around another came come work three word must because does part even place well "
    "such here take why things help put years different away again off went old number great tell men say "
    "small every found still between name should home big give air line set own under read last never us left "
    "end along while might next sound below saw something thought both few those always looked show large "
    "often together asked house world going want school important until form food keep children feet land "
    "side without boy once animals life enough took sometimes four head above kind began almost live page got "
    "earth need far hand high year mother light parts country father let night following picture being study "
    "second eyes soon times story boys since white days ever paper hard near sentence better best across "
    "during today others however sure means knew try told young miles sun ways thing whole hear example heard "
    "several change answer room sea against top turned learn point city play toward five using himself "
    "usually image shows color red blue"
)
ONSETS = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl sh st th tr"
VOWELS = "a e i o u ai ea ee io ou"
QUESTION_STARTERS = (
    "what is the",
    "what are the",
    "can you describe the",
    "how many",
    "where is the",
    "why does the",
    "what color is the",
    "is there a",
    "what does the",
    "please explain the",
    "which of the following",
    "what can you tell me about the",
    "describe the image in detail",
    "what is happening in the",
    "how would you",
    "what kind of",
    "who is the",
    "when was the",
    "according to the image what",
    "look at the picture and answer",
)
ANSWER_OPENERS = (
    "the image shows",
    "there are",
    "in the picture",
    "it is",
    "based on the image",
    "the answer is",
    "yes there is",
    "no there is not",
    "the main subject is",
    "this is a",
    "in this image we can see",
    "the photo shows",
    "looking at the image",
    "i can see",
    "the correct answer is",
)
PARAGRAPH_OPENERS = (
    "in addition",
    "on the other hand",
    "for example",
    "as a result",
    "in this section",
    "it is important to note that",
    "at the same time",
    "in other words",
    "first of all",
    "finally",
)


# ----------------------------------------------------------------------------------------------- text data


def vocabulary(size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``size`` words (English function words first, then distinct pseudo-words) and the cumulative
    Zipf-Mandelbrot probabilities p(rank r) ~ 1 / (r + 2.7)^1.07."""
    rng = np.random.default_rng([seed, 1])
    onsets = ONSETS.split(" ")
    vowels = VOWELS.split(" ")
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    words = list(dict.fromkeys(FUNCTION_WORDS_TEXT.split(" ")))
    seen = set(words)
    while len(words) < size:
        syllables = int(rng.integers(1, 4))
        w = "".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    ranks = np.arange(1, size + 1, dtype=np.float64)
    p = 1.0 / (ranks + 2.7) ** 1.07
    return words[:size], np.cumsum(p / p.sum())


class Sampler:
    def __init__(self, words: list[str], cdf: np.ndarray, rng: np.random.Generator) -> None:
        self.words, self.cdf, self.rng = words, cdf, rng

    def __call__(self, n: int) -> list[str]:
        idx = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.words) - 1)
        return [self.words[i] for i in idx]


def make_text(rng: np.random.Generator, sample: Sampler) -> str:
    """A conversation (``User: ... Assistant: ...`` turns) or a paragraph of 40-200 words."""
    target = int(rng.integers(40, 201))
    out: list[str] = []
    if rng.random() < 0.6:
        while len(out) < target:
            q = QUESTION_STARTERS[rng.integers(len(QUESTION_STARTERS))].split() + sample(int(rng.integers(3, 12)))
            a = ANSWER_OPENERS[rng.integers(len(ANSWER_OPENERS))].split() + sample(int(rng.integers(12, 60)))
            out += ["User:", *q[:-1], q[-1] + "?", "Assistant:", *a[:-1], a[-1] + "."]
    else:
        while len(out) < target:
            s = sample(int(rng.integers(8, 26)))
            if rng.random() < 0.3:
                s = PARAGRAPH_OPENERS[rng.integers(len(PARAGRAPH_OPENERS))].split() + s
            s[0] = s[0].capitalize()
            out += [*s[:-1], s[-1] + "."]
    return " ".join(out[:target])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def bin_of(j: float) -> int:
    for k, (lo, hi) in enumerate(BINS):
        if lo <= j < hi or (k == len(BINS) - 1 and j == hi):
            return k
    return -1


def mutate(tokens: list[str], edits: int, rng: np.random.Generator, sample: Sampler) -> list[str]:
    """``edits`` random word edits: 50% substitutions, 25% insertions, 25% deletions."""
    out = list(tokens)
    for _ in range(edits):
        op = rng.random()
        pos = int(rng.integers(len(out)))
        if op < 0.5:
            out[pos] = sample(1)[0]
        elif op < 0.75 or len(out) <= 10:
            out.insert(pos, sample(1)[0])
        else:
            del out[pos]
    return out


def template_siblings(groups: int, size: int, rng: np.random.Generator, sample: Sampler) -> list[list[str]]:
    """``groups`` groups of ``size`` distinct texts sharing a boilerplate question of 20-60 words (think of a
    benchmark's fixed instructions) and differing in their own 15-80 words: not duplicates of each other,
    though their shingle sets overlap (true Jaccard mostly 0.1-0.6)."""
    out = []
    for _ in range(groups):
        template = QUESTION_STARTERS[rng.integers(len(QUESTION_STARTERS))].split() + sample(int(rng.integers(20, 61)))
        group = []
        for _ in range(size):
            own = sample(int(rng.integers(15, 81)))
            cut = max(1, len(own) // 4)
            group.append(" ".join(["User:", *template, *own[:cut]]) + "? Assistant: " + " ".join(own[cut:]) + ".")
        out.append(group)
    return out


def text_set(args: argparse.Namespace) -> dict[str, Any]:
    """Originals, template siblings, then planted copies in a seeded random order; the family (original
    index) of each, the true Jaccard of each copy with its original and its bin."""
    rng = np.random.default_rng([args.seed, 2])
    words, cdf = vocabulary(args.vocab, args.seed)
    sample = Sampler(words, cdf, rng)
    originals = [make_text(rng, sample) for _ in range(args.texts)]
    orig_sets = [shingles(t, SHINGLE_WORDS) for t in originals]
    counts = [0] * len(BINS)
    copies: list[tuple[str, int, float, int]] = []
    attempts, cap = 0, 60 * args.copies_per_bin * len(BINS)
    while min(counts) < args.copies_per_bin and attempts < cap:
        attempts += 1
        open_bins = [k for k, c in enumerate(counts) if c < args.copies_per_bin]
        lo, hi = BINS[open_bins[int(rng.integers(len(open_bins)))]]
        target = rng.uniform(lo, hi)
        src = int(rng.integers(args.texts))
        n = len(orig_sets[src])
        # isolated substitutions: each breaks SHINGLE_WORDS shingles and adds as many, J = (n - 3k) / (n + 3k)
        edits = max(1, round(n * (1 - target) / (SHINGLE_WORDS * (1 + target)) * rng.uniform(0.8, 1.25)))
        text = " ".join(mutate(originals[src].split(" "), edits, rng, sample))
        j = jaccard(shingles(text, SHINGLE_WORDS), orig_sets[src])
        k = bin_of(j)
        if k >= 0 and counts[k] < args.copies_per_bin:
            counts[k] += 1
            copies.append((text, src, j, k))
    order = rng.permutation(len(copies))
    copies = [copies[i] for i in order]
    groups = template_siblings(args.template_groups, TEMPLATE_GROUP_SIZE, rng, sample)
    siblings = [t for g in groups for t in g]
    sibling_j = []
    for g in groups:
        sets = [shingles(t, SHINGLE_WORDS) for t in g]
        sibling_j += [jaccard(a, b) for x, a in enumerate(sets) for b in sets[x + 1 :]]
    texts = originals + siblings + [c[0] for c in copies]
    n_distinct = args.texts + len(siblings)
    family = np.array(list(range(n_distinct)) + [c[1] for c in copies], dtype=np.int64)
    return {
        "texts": texts,
        "family": family,
        "true_j": np.array([c[2] for c in copies]),
        "bin": np.array([c[3] for c in copies], dtype=np.int64),
        "n_orig": args.texts,
        "n_distinct": n_distinct,
        "sibling_pair_j": np.array(sibling_j),
        "attempts": attempts,
        "words_per_original": [len(t.split()) for t in originals],
    }


# ------------------------------------------------------------------------------------------------ scoring


def score(
    result: list[int],
    family: np.ndarray,
    n_orig: int,
    n_distinct: int | None = None,
    member: np.ndarray | None = None,
) -> dict[str, Any]:
    """Drops, drops of the right family, false positives (originals dropped, copies matched across
    families) and per copy whether it was found (dropped onto its own family). Samples ``n_orig`` to
    ``n_distinct`` (text template siblings) are scored apart: left out of drops and precision. A family is
    lost when none of its ``member`` samples (default: all) is kept."""
    n_distinct = n_orig if n_distinct is None else n_distinct
    res = np.asarray(result, dtype=np.int64)
    dropped = res >= 0
    match_family = np.where(dropped, family[np.maximum(res, 0)], -1)
    right = dropped & (match_family == family)
    main = np.ones(len(res), bool)
    main[n_orig:n_distinct] = False
    found = right[n_distinct:]
    wrong = dropped & ~right
    return {
        "drops": int(dropped[main].sum()),
        "right": int(right[main].sum()),
        "precision": float(right[main].sum() / dropped[main].sum()) if dropped[main].any() else 1.0,
        "fp_originals": int(dropped[:n_orig].sum()),
        "fp_copies_cross_family": int(wrong[n_distinct:].sum()),
        # originals none of whose family (original and copies) is kept: content lost, not just mis-paired
        "families_lost": int(
            n_orig - np.isin(np.arange(n_orig), family[~dropped & (True if member is None else member)]).sum()
        ),
        "found": found,
        "fp_pairs": [(int(i), int(res[i])) for i in np.flatnonzero(wrong & main)],
        "sibling_pairs": [(int(i), int(res[i])) for i in np.flatnonzero(dropped & ~main)],
    }


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


# ------------------------------------------------------------------------------------------------- text run


def text_configs() -> list[dict[str, Any]]:
    configs = []
    for t in TEXT_THRESHOLDS:
        b = banding_for(t, NUM_PERM)
        for verify in (True, False):
            configs.append({"threshold": t, "verify": verify, "bands": b.bands, "rows": b.rows})
    configs.append({"threshold": 0.8, "verify": False, "bands": 14, "rows": 8, "note": "DataTrove-like"})
    for t in (0.75, 0.8):
        configs.append({"threshold": t, "verify": True, "bands": 20, "rows": 6})
    for c in configs:
        c["name"] = (
            "DataTrove-like 14x8 no verify"
            if c.get("note")
            else f"t={c['threshold']} {'verify' if c['verify'] else 'no verify'} {c['bands']}x{c['rows']}"
        )
    return configs


def pairwise_estimates(sigs: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Upper-triangle estimated Jaccard (share of equal hash values) of all pairs of rows, as a flat array."""
    n = len(sigs)
    out = []
    for s in range(0, n, chunk):
        block = sigs[s : s + chunk]
        eq = (block[:, None, :] == sigs[None, :, :]).mean(axis=2)
        for r in range(len(block)):
            out.append(eq[r, s + r + 1 :])
    return np.concatenate(out) if out else np.empty(0)


def bench_text(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = text_set(args)
    texts, family, n_orig, n_distinct = data["texts"], data["family"], data["n_orig"], data["n_distinct"]
    copy_bin, true_j = data["bin"], data["true_j"]
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sigs = [minhash_signature(t, NUM_PERM, SHINGLE_WORDS) for t in texts]
    sig_s = time.perf_counter() - t0
    stacked = np.stack(sigs)  # every text has words
    bin_sizes = [int((copy_bin == k).sum()) for k in range(len(BINS))]
    print(
        f"text: {n_orig:,} originals ({np.mean(data['words_per_original']):.0f} words on average), "
        f"{n_distinct - n_orig} template siblings, {len(texts) - n_distinct:,} copies per bin {bin_sizes} in "
        f"{gen_s:.1f}s ({data['attempts']:,} attempts), signatures {sig_s:.1f}s",
        flush=True,
    )
    first_high = next(k for k, (lo, _) in enumerate(BINS) if lo >= HIGH_J)
    high = copy_bin >= first_high
    orig_sets: dict[int, set] = {}

    def true_pair(i: int, j: int) -> float:
        for x in (i, j):
            if x not in orig_sets:
                orig_sets[x] = shingles(texts[x], SHINGLE_WORDS)
        return round(jaccard(orig_sets[i], orig_sets[j]), 3)

    rows = []
    for cfg in text_configs():
        t0 = time.perf_counter()
        result = greedy_text_dedup(
            sigs, cfg["threshold"], NUM_PERM, banding=Banding(cfg["bands"], cfg["rows"]), verify=cfg["verify"]
        )
        seconds = time.perf_counter() - t0
        s = score(result, family, n_orig, n_distinct)
        found = s.pop("found")
        fp_pairs = s.pop("fp_pairs")
        sibling_pairs = s.pop("sibling_pairs")
        row = {
            **cfg,
            "seconds": round(seconds, 2),
            "recall_by_bin": [round(float(found[copy_bin == k].mean()), 4) for k in range(len(BINS))],
            "recall_all": round(float(found.mean()), 4),
            "recall_true_j_ge_0.8": round(float(found[high].mean()), 4),
            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()},
            "fp_pairs_true_jaccard": sorted((true_pair(i, j) for i, j in fp_pairs), reverse=True)[:20],
            "siblings_dropped": len(sibling_pairs),
            "siblings_dropped_true_jaccard": sorted((true_pair(i, j) for i, j in sibling_pairs), reverse=True),
        }
        row["worst_bin_ge_0.8"] = min(row["recall_by_bin"][first_high:])
        row["meets_target"] = row["worst_bin_ge_0.8"] >= TARGET_RECALL and row["precision"] >= TARGET_PRECISION
        row["meets_target_aggregate"] = (
            row["recall_true_j_ge_0.8"] >= TARGET_RECALL and row["precision"] >= TARGET_PRECISION
        )
        rows.append(row)
        print(
            f"  {cfg['name']:<30} {seconds:5.1f}s recall(J>=0.8) {pct(row['recall_true_j_ge_0.8']):>5}% "
            f"(worst bin {pct(row['worst_bin_ge_0.8'])}%) precision {pct(row['precision']):>5}% "
            f"drops {row['drops']} fp {row['fp_originals']}+{row['fp_copies_cross_family']} "
            f"siblings dropped {row['siblings_dropped']}",
            flush=True,
        )
    # references without LSH: each copy's estimate against its own original
    est = (stacked[n_distinct:] == stacked[family[n_distinct:]]).mean(axis=1)
    reference = {}
    for t in TEXT_THRESHOLDS:
        ok = est >= t
        reference[str(t)] = {
            "recall_by_bin": [round(float(ok[copy_bin == k].mean()), 4) for k in range(len(BINS))],
            "recall_true_j_ge_0.8": round(float(ok[high].mean()), 4),
        }
    est_err = est - true_j
    unrelated = pairwise_estimates(stacked[:n_orig])
    return {
        "params": {
            "texts": n_orig,
            "copies_per_bin": args.copies_per_bin,
            "vocab": args.vocab,
            "num_perm": NUM_PERM,
            "shingle_words": SHINGLE_WORDS,
            "bins": BINS,
            "template_groups": args.template_groups,
            "template_group_size": TEMPLATE_GROUP_SIZE,
            "order": "originals, template siblings, then all copies in a seeded random order (each copy after "
            "its original)",
            "edits": "50% substitutions, 25% insertions, 25% deletions of Zipf words at random positions",
        },
        "copies_per_bin": bin_sizes,
        "template_sibling_pair_true_jaccard": {
            "pairs": len(data["sibling_pair_j"]),
            "mean": round(float(data["sibling_pair_j"].mean()), 4),
            "max": round(float(data["sibling_pair_j"].max()), 4),
            **{f"ge_{t}": int((data["sibling_pair_j"] >= t).sum()) for t in (0.3, 0.5, 0.6, 0.7)},
        },
        "copy_attempts": data["attempts"],
        "original_words": {
            "mean": round(float(np.mean(data["words_per_original"])), 1),
            "min": int(np.min(data["words_per_original"])),
            "max": int(np.max(data["words_per_original"])),
        },
        "generate_s": round(gen_s, 2),
        "signature_s": round(sig_s, 2),
        "configs": rows,
        "no_lsh_reference": reference,
        "minhash_estimate_minus_true_jaccard": {
            "mean": round(float(est_err.mean()), 4),
            "std": round(float(est_err.std()), 4),
            "p5": round(float(np.percentile(est_err, 5)), 4),
            "p95": round(float(np.percentile(est_err, 95)), 4),
        },
        "unrelated_originals_estimated_jaccard": {
            "pairs": len(unrelated),
            "mean": round(float(unrelated.mean()), 5),
            "max": round(float(unrelated.max()), 4),
            "p99.99": round(float(np.percentile(unrelated, 99.99)), 4),
            "pairs_ge_0.3": int((unrelated >= 0.3).sum()),
            "pairs_ge_0.5": int((unrelated >= 0.5).sum()),
        },
    }


def text_table(doc: dict[str, Any]) -> str:
    head = [f"[{lo}, {hi}{']' if k == len(BINS) - 1 else ')'}" for k, (lo, hi) in enumerate(BINS)]
    lines = [
        "| config (threshold, verify, bands x rows) | "
        + " | ".join(head)
        + " | **J ≥ 0.8** | all | drops | precision | FP orig / cross | families lost | siblings dropped |",
        "|---|" + "---:|" * (len(BINS) + 7),
    ]
    first_high = next(k for k, (lo, _) in enumerate(BINS) if lo >= HIGH_J)
    lines.append(
        "| *copies in bin* | "
        + " | ".join(str(n) for n in doc["copies_per_bin"])
        + f" | {sum(doc['copies_per_bin'][first_high:])} | {sum(doc['copies_per_bin'])} | | | | | "
        f"*of {doc['params']['template_groups'] * doc['params']['template_group_size']}* |"
    )
    for r in doc["configs"]:
        name = r["name"] + (" (today)" if r["name"] == CURRENT_TEXT else "") + (" ✓" if r["meets_target"] else "")
        lines.append(
            f"| {name} | "
            + " | ".join(pct(x) for x in r["recall_by_bin"])
            + f" | **{pct(r['recall_true_j_ge_0.8'])}** | {pct(r['recall_all'])} | {r['drops']} | "
            f"{pct(r['precision'])} | {r['fp_originals']} / {r['fp_copies_cross_family']} | {r['families_lost']} | "
            f"{r['siblings_dropped']} |"
        )
    for t, ref in doc["no_lsh_reference"].items():
        lines.append(
            f"| *no LSH, estimate ≥ {t}* | "
            + " | ".join(pct(x) for x in ref["recall_by_bin"])
            + f" | *{pct(ref['recall_true_j_ge_0.8'])}* | | | | | | |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- image data


def photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: linear gradient + low-frequency colour field, shapes, blur, grain."""
    w, h = (int(v) for v in rng.integers(256, 513, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * 0.5 + 0.5
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    grad = c0 + (c1 - c0) * ramp[..., None]
    field = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3), dtype=np.uint8)
    low = np.asarray(Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    mix = rng.uniform(0.3, 0.7)
    im = Image.fromarray(np.clip(mix * grad + (1 - mix) * low, 0, 255).astype(np.uint8))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 11))):
        colour = (*(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(120, 256)))
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(pts, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    im = Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
    blur = float(rng.uniform(0, 2.5))
    if blur > 0.3:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    grain = rng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def caption(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An opaque box with a caption, 80% of the width x 12.5% of the height (10% of the area), at the top or
    bottom."""
    out = im.copy()
    w, h = out.size
    bw, bh = int(0.8 * w), int(0.125 * h)
    x0 = (w - bw) // 2
    y0 = int(0.03 * h) if rng.random() < 0.3 else h - bh - int(0.03 * h)
    dark = rng.random() < 0.5
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(20, 20, 20) if dark else (240, 240, 240))
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), 8)]
    font = _font(max(8, int(bh * 0.55)))
    text = " ".join(words)
    while len(text) > 3 and draw.textlength(text, font=font) > bw * 0.95:
        text = text.rsplit(" ", 1)[0] if " " in text else text[:-1]
    draw.text((x0 + bw * 0.025, y0 + bh * 0.2), text, fill=(240, 240, 240) if dark else (20, 20, 20), font=font)
    return out


def transform(name: str, im: Image.Image, rng: np.random.Generator) -> bytes:
    w, h = im.size
    if name == "jpeg_q60":
        return jpeg(im, 60)
    if name == "resize_50":
        return jpeg(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS))
    if name in ("crop_5", "crop_10"):
        f = 0.025 if name == "crop_5" else 0.05
        return jpeg(im.crop((round(f * w), round(f * h), w - round(f * w), h - round(f * h))))
    if name == "text_overlay":
        return jpeg(caption(im, rng))
    if name == "rotate_2":
        return jpeg(im.rotate(2.0 if rng.random() < 0.5 else -2.0, Image.Resampling.BICUBIC, expand=False))
    if name == "bright_10":
        return jpeg(ImageEnhance.Brightness(im).enhance(1.1))
    if name == "hflip":
        return jpeg(ImageOps.mirror(im))
    raise ValueError(name)


def bench_images(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 3])
    originals: list[bytes] = []
    copies: list[tuple[bytes, int, str]] = []
    for i in range(args.images):
        im = photo(rng)
        data = jpeg(im, int(rng.integers(80, 96)))
        originals.append(data)
        decoded = Image.open(io.BytesIO(data)).convert("RGB")
        for name in TRANSFORMS:
            copies.append((transform(name, decoded, rng), i, name))
    order = rng.permutation(len(copies))
    copies = [copies[k] for k in order]
    blobs = originals + [c[0] for c in copies]
    family = np.array(list(range(args.images)) + [c[1] for c in copies], dtype=np.int64)
    copy_kind = np.array([c[2] for c in copies])
    kind_of = ["original"] * len(originals) + [c[2] for c in copies]  # dropped sample -> its match
    gen_s = time.perf_counter() - t0
    n_orig = args.images
    print(
        f"images: {n_orig:,} originals + {len(copies):,} copies in {gen_s:.1f}s "
        f"(original JPEG {np.mean([len(b) for b in originals]) / 1024:.0f} KiB on average)",
        flush=True,
    )
    expected = ~np.isin(copy_kind, NOT_EXPECTED)
    out: dict[str, Any] = {
        "params": {
            "images": n_orig,
            "transforms": list(TRANSFORMS),
            "not_expected": list(NOT_EXPECTED),
            "distances": args.distances,
            "order": "originals, then all copies in a seeded random order (each copy after its original)",
            "copy_jpeg_quality": 90,
        },
        "generate_s": round(gen_s, 2),
        "methods": {},
    }
    for method in HASHES:
        t0 = time.perf_counter()
        hashes = np.array([to_unsigned(image_hash(b, method)) for b in blobs], dtype=np.uint64)
        hash_s = time.perf_counter() - t0
        samples = [(int(h),) for h in hashes]
        dist = np.bitwise_count(hashes[n_orig:] ^ hashes[family[n_orig:]]).astype(np.int64)
        orig = hashes[:n_orig]
        pair_d = np.bitwise_count(orig[:, None] ^ orig[None, :])[np.triu_indices(n_orig, 1)].astype(np.int64)
        nearest = np.bitwise_count(orig[:, None] ^ orig[None, :]).astype(np.int64)
        np.fill_diagonal(nearest, 64)
        rows = []
        for d in args.distances:
            t1 = time.perf_counter()
            result = greedy_image_dedup(samples, d)
            seconds = time.perf_counter() - t1
            s = score(result, family, n_orig, member=np.concatenate([np.ones(n_orig, bool), expected]))
            found = s.pop("found")
            fp_pairs = s.pop("fp_pairs")
            s.pop("sibling_pairs")
            fp_kinds: dict[str, int] = {}
            for i, j in fp_pairs:
                key = f"{kind_of[i]} -> {kind_of[j]}"
                fp_kinds[key] = fp_kinds.get(key, 0) + 1
            row = {
                "max_distance": d,
                "seconds": round(seconds, 3),
                "recall_by_transform": {t: round(float(found[copy_kind == t].mean()), 4) for t in TRANSFORMS},
                "recall_expected": round(float(found[expected].mean()), 4),
                **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()},
                "fp_pairs_distance": sorted(int((hashes[i] ^ hashes[j]).bit_count()) for i, j in fp_pairs)[:20],
                "fp_kinds": dict(sorted(fp_kinds.items(), key=lambda kv: -kv[1])),
            }
            rows.append(row)
        out["methods"][method] = {
            "hash_s": round(hash_s, 2),
            "configs": rows,
            "copy_distance": {
                t: {
                    "median": float(np.median(dist[copy_kind == t])),
                    "p90": float(np.percentile(dist[copy_kind == t], 90)),
                    "max": int(dist[copy_kind == t].max()),
                    "share_within": {
                        str(d): round(float((dist[copy_kind == t] <= d).mean()), 4) for d in args.distances
                    },
                }
                for t in TRANSFORMS
            },
            "original_pairs": {
                "pairs": len(pair_d),
                "min_distance": int(pair_d.min()),
                "p0.1_distance": float(np.percentile(pair_d, 0.1)),
                "median_distance": float(np.median(pair_d)),
                "within": {str(d): int((pair_d <= d).sum()) for d in args.distances},
                "rate_per_pair_within": {str(d): float((pair_d <= d).mean()) for d in args.distances},
                "originals_with_another_within": {
                    str(d): int((nearest.min(axis=1) <= d).sum()) for d in args.distances
                },
            },
        }
        best = rows[-1]
        print(
            f"  {method}: hashed {len(blobs):,} in {hash_s:.1f}s; originals' closest pair {int(pair_d.min())} bits; "
            f"at d={best['max_distance']} recall {pct(best['recall_expected'])}% precision {pct(best['precision'])}%",
            flush=True,
        )
    return out


def image_table(doc: dict[str, Any]) -> str:
    lines = [
        "| hash | max_distance | "
        + " | ".join(TRANSFORMS)
        + " | **recall (excl. hflip)** | drops | precision | FP orig / cross | families lost"
        + " | original pairs within d |",
        "|---|---:|" + "---:|" * (len(TRANSFORMS) + 6),
    ]
    for method, m in doc["methods"].items():
        for r in m["configs"]:
            d = r["max_distance"]
            today = " (today)" if (method, d) == CURRENT_IMAGE else ""
            lines.append(
                f"| {method}{today} | {d} | "
                + " | ".join(pct(r["recall_by_transform"][t]) for t in TRANSFORMS)
                + f" | **{pct(r['recall_expected'])}** | {r['drops']} | {pct(r['precision'])} | "
                f"{r['fp_originals']} / {r['fp_copies_cross_family']} | {r['families_lost']} | "
                f"{m['original_pairs']['within'][str(d)]} |"
            )
    return "\n".join(lines)


def distance_table(doc: dict[str, Any]) -> str:
    lines = ["| hash | " + " | ".join(TRANSFORMS) + " |", "|---|" + "---:|" * len(TRANSFORMS)]
    for method, m in doc["methods"].items():
        cd = m["copy_distance"]
        lines.append(
            f"| {method} | " + " | ".join(f"{cd[t]['median']:.0f} / {cd[t]['p90']:.0f}" for t in TRANSFORMS) + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=3_000, help="original texts")
    ap.add_argument("--copies-per-bin", type=int, default=300, help="planted text copies per true-Jaccard bin")
    ap.add_argument(
        "--template-groups", type=int, default=60, help=f"text groups of {TEMPLATE_GROUP_SIZE} template siblings"
    )
    ap.add_argument("--vocab", type=int, default=5_000, help="Zipf vocabulary size")
    ap.add_argument("--images", type=int, default=1_000, help="original images (one copy per transform each)")
    ap.add_argument("--distances", default="4,6,8,10,12", help="image max_distance values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 texts, 40 copies per bin, 150 images")
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--no-images", action="store_true")
    args = ap.parse_args()
    args.distances = [int(x) for x in args.distances.split(",") if x]
    if args.quick:
        args.texts, args.copies_per_bin, args.template_groups, args.images = 500, 40, 20, 150
    load_before = loadavg()
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "bench_dedup_recall",
        "description": "precision/recall of near_dup_text (MinHash-LSH) and near_dup_images (phash/dhash) on "
        "planted copies",
        "params": {"seed": args.seed, "quick": args.quick},
        "targets": {
            "text": f"recall >= {TARGET_RECALL} on copies with true Jaccard >= {HIGH_J}, precision >= "
            f"{TARGET_PRECISION}",
        },
        "loadavg_before": load_before,
    }
    if not args.no_text:
        doc["text"] = bench_text(args)
    if not args.no_images:
        doc["images"] = bench_images(args)
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    doc["environment"] = environment() | {
        "versions_neardup": {d: metadata.version(d) for d in ("imagehash", "datasketch", "scipy")}
    }
    path = write_result("bench_dedup_recall", doc)
    if "text" in doc:
        p = doc["text"]["params"]
        print(
            f"\n### Text: recall (%) per true Jaccard bin of {p['shingle_words']}-word shingle sets "
            f"({p['texts']:,} originals, {sum(doc['text']['copies_per_bin']):,} copies; ✓ = recall ≥ "
            f"{pct(TARGET_RECALL)}% in every bin ≥ {HIGH_J} and precision ≥ {pct(TARGET_PRECISION)}%)\n"
        )
        print(text_table(doc["text"]))
        sib = doc["text"]["template_sibling_pair_true_jaccard"]
        print(
            f"\nTemplate siblings (distinct texts sharing a boilerplate question): {sib['pairs']} pairs, true "
            f"Jaccard mean {sib['mean']:.2f}, max {sib['max']:.2f}; pairs >= 0.5: {sib['ge_0.5']}, >= 0.6: "
            f"{sib['ge_0.6']}, >= 0.7: {sib['ge_0.7']}"
        )
    if "images" in doc:
        print(
            f"\n### Images: recall (%) per transform ({doc['images']['params']['images']:,} originals, one copy "
            "each per transform; hflip is not expected to match)\n"
        )
        print(image_table(doc["images"]))
        print("\nHamming distance of each copy to its original (median / p90):\n")
        print(distance_table(doc["images"]))
    print(f"\ntotal {doc['total_s']:.0f}s; results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
