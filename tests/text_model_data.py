"""Small real text models made in the tests: a fastText language-id model trained in a second on generated text
(English vs a generated language ``xx``), hand-written KenLM ARPA files, and a SentencePiece model trained on a
few sentences. Each needs its package (the ``text_models`` extra, installed by ``.[dev]``)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

ENGLISH = [
    "the old library in the middle of the town was built more than a hundred years ago",
    "it has a large reading room where people come to study to write and to meet their friends",
    "in the summer the garden behind the building is open and children can play there in the shade",
    "most of the books were given by families who lived in the houses along the river",
    "today the staff are working on a plan to bring the collection into the new century",
    "they want to keep the spirit of the place while making it easier for everyone to use",
    "the city council said that the project cost more than they expected",
    "next year the school will also offer music classes for young students and their parents",
]


def foreign_words(n: int = 60, seed: int = 7) -> list[str]:
    """Words of a generated language: consonant-vowel syllables with letters English rarely puts together."""
    rng = random.Random(seed)
    return ["".join(rng.choice("kzqvxj") + rng.choice("aeiouy") for _ in range(rng.randint(2, 4))) for _ in range(n)]


def foreign_text(n_words: int = 30, seed: int = 1) -> str:
    """Sentences of the generated language, with periods (so they pass the punctuation rules)."""
    rng, words = random.Random(seed), foreign_words()
    out = []
    for i in range(n_words):
        out.append(rng.choice(words) + ("." if i % 8 == 7 else ""))
    return " ".join(out).capitalize() + "."


_TRAIN = """
import sys, fasttext
train, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
for attempt in range(6):  # fastText's SGD now and then diverges on tiny data ("Encountered NaN"): reseed, slower
    try:
        model = fasttext.train_supervised(
            train, epoch=10, lr=0.1 / 2**attempt, dim=16, minn=2, maxn=4, bucket=20_000, thread=1,
            seed=seed + attempt, verbose=0,
        )
        break
    except RuntimeError as exc:
        if "NaN" not in str(exc) or attempt == 5:
            raise
model.save_model(out)
"""


def train_lang_id(path: Path, seed: int = 0) -> Path:
    """A fastText supervised model with labels ``__label__en`` and ``__label__xx`` (about a second)."""
    rng = random.Random(seed)
    english = [w for sentence in ENGLISH for w in sentence.split()]
    foreign = foreign_words()
    train = path.with_suffix(".train.txt")
    with open(train, "w") as f:
        for _ in range(600):
            f.write("__label__en " + " ".join(rng.choice(english) for _ in range(rng.randint(5, 20))) + "\n")
            f.write("__label__xx " + " ".join(rng.choice(foreign) for _ in range(rng.randint(5, 20))) + "\n")
    # Trained in a fresh interpreter: in a long-lived xdist worker, fastText's training has failed with
    # "Encountered NaN" on every try (even at a 32x smaller learning rate) after other tests ran in the process.
    cmd = [sys.executable, "-c", _TRAIN, str(train), str(path), str(seed)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    train.unlink()
    return path


def write_arpa(
    path: Path, unigrams: dict[str, tuple[float, float]], bigrams: dict[tuple[str, str], float] | None = None
) -> Path:
    """An ARPA file: ``unigrams`` word -> (log10 p, log10 backoff), ``bigrams`` (w1, w2) -> log10 p."""
    bigrams = bigrams or {}
    lines = ["\\data\\", f"ngram 1={len(unigrams)}"]
    if bigrams:
        lines.append(f"ngram 2={len(bigrams)}")
    lines += ["", "\\1-grams:"]
    lines += [f"{p}\t{w}\t{b}" if bigrams else f"{p}\t{w}" for w, (p, b) in unigrams.items()]
    if bigrams:
        lines += ["", "\\2-grams:"]
        lines += [f"{p}\t{w1} {w2}" for (w1, w2), p in bigrams.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


# A bigram model small enough to score by hand (tests/unit/test_kenlm_perplexity.py).
HAND_UNIGRAMS = {
    "<unk>": (-1.0, 0.0),
    "<s>": (-99.0, -0.5),
    "</s>": (-0.5, 0.0),
    "the": (-0.7, -0.3),
    "cat": (-0.9, -0.2),
}
HAND_BIGRAMS = {("<s>", "the"): -0.2, ("the", "cat"): -0.4, ("cat", "</s>"): -0.3}


# The hand-written bigram model above as KenLM binaries (the kenlm package has no build_binary): made from
# write_arpa(path, HAND_UNIGRAMS, HAND_BIGRAMS) by KenLM's build_binary (kpu/kenlm 4cb443e, x86-64 Linux),
# `build_binary hand.arpa hand.bin` (probing hash tables) and `build_binary trie hand.arpa hand.bin`. KenLM's
# binary layout is that of the machine that built it: these load on little-endian 64-bit machines.
HAND_BINARY = {
    "probing": (
        "bW1hcCBsbSBodHRwOi8va2hlYWZpZWxkLmNvbS9jb2RlIGZvcm1hdCB2ZXJzaW9uIDUKAAAAAAAAAAAAAACAPwAAAL8BAAAA////"
        "/wAAAAABAAAAAAAAAAIAAAAAAMA/AAAAAAEAAAAAAAAABQAAAAAAAAADAAAAAAAAAAAAAAAAAAAABQAAAHB+Ib05hnUAAQAAAL+5"
        "h+dD4Al3BAAAAAAAAAAAAAAAAAAAACui5RqsJzukAwAAAAps9/F9c+BrAgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgL8A"
        "AACAAADGwgAAAL8AAAA/AAAAgDMzMz+amZm+ZmZmP83MTL4AAAAAAAAAAAjyAmiEsTMTzczMvoFy7fB9e3yFzcxMvimGN9C8woMg"
        "mpmZvgAAAAAAAAAAAAAAADx1bms+ADxzPgA8L3M+AHRoZQBjYXQA"
    ),
    "trie": (
        "bW1hcCBsbSBodHRwOi8va2hlYWZpZWxkLmNvbS9jb2RlIGZvcm1hdCB2ZXJzaW9uIDUKAAAAAAAAAAAAAACAPwAAAL8BAAAA////"
        "/wAAAAABAAAAAAAAAAIAAAAAAMA/AgAAAAEAAAABAAAABQAAAAAAAAADAAAAAAAAAAAAAAAEAAAAAAAAAHB+Ib05hnUACmz38X1z"
        "4Gu/uYfnQ+AJdyui5RqsJzukAAAAAAAAAAAAAIC/AAAAgAAAAAAAAAAAAADGwgAAAL8AAAAAAAAAAAAAAL8AAACAAAAAAAAAAABm"
        "Zma/zcxMvgEAAAAAAAAAMzMzv5qZmb4CAAAAAAAAAAAAAAAAAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA08zM9LGZmdmXZmYm"
        "HwAAAAAAAAAAAAAAADx1bms+ADxzPgA8L3M+AGNhdAB0aGUA"
    ),
}


def write_kenlm_binary(path: Path, kind: str = "probing") -> Path:
    """HAND_BINARY[kind] written to ``path``."""
    import base64

    path.write_bytes(base64.b64decode(HAND_BINARY[kind]))
    return path


def train_sentencepiece(path_prefix: Path, sentences: list[str], vocab_size: int = 60) -> Path:
    """A SentencePiece unigram model trained on ``sentences`` (``<prefix>.model``)."""
    import sentencepiece as spm

    text = Path(f"{path_prefix}.txt")
    text.write_text("\n".join(sentences) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(path_prefix),
        vocab_size=vocab_size,
        character_coverage=1.0,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    text.unlink()
    return Path(f"{path_prefix}.model")


# --------------------------------------------------------------------------------------------------
# OBELICS inputs and recipes that name the models


def obelics_row(items: list[tuple[str, str]], url: str = "https://example.org/doc") -> dict:
    """A row of the OBELICS parquet layout; items are ("text", str) or ("image", url)."""
    import json

    meta = {"format": "jpg", "original_width": 300, "original_height": 200}
    return {
        "images": [v if k == "image" else None for k, v in items],
        "texts": [v if k == "text" else None for k, v in items],
        "metadata": json.dumps([{**meta, "src": v} if k == "image" else None for k, v in items]),
        "general_metadata": json.dumps({"url": url}),
    }


def write_obelics(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("images", pa.list_(pa.string())),
            ("texts", pa.list_(pa.string())),
            ("metadata", pa.string()),
            ("general_metadata", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# Every text rule off but the model rules: what a document is checked on is then only the model.
RULES_OFF: dict[str, Any] = {
    "min_words": None,
    "max_words": None,
    "max_char_repetition": None,
    "max_word_repetition": None,
    "max_special_characters": None,
    "min_stopwords": None,
    "max_flagged_words": None,
    "min_punctuation": None,
    "min_common_words": None,
}


def obelics_recipe(data: Path, cache: Path, document: dict, paragraph: dict | None = None) -> dict:
    """A build recipe reading ``data`` with the given ``filters.document`` (and ``filters.paragraph``)."""
    filters = {"document": document, "paragraph": paragraph or {"min_common_words": None}}
    source = {"name": "web", "reader": "obelics", "path": str(data), "cache_dir": str(cache), "filters": filters}
    return {"name": "web", "sources": [source], "output": {"kind": "interleaved"}}
