"""Real builds with a real tokenizer: sidecar token counts and dataset.json totals are the tokenizer's counts."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from curation.build.runner import build
from curation.recipe import validate_recipe
from shards import count_tokens, read_manifest, verify_dataset

PLAIN = "what is shown in the image a red car parked next to tree how many cats are there two black sofa"
WORDS = PLAIN.split()
UNICODE = ["très", "mignons", "数学题", "等于几", "🐱", "Привет", "naïve", "façade"]
N = 60


def _questions_answers(rng: random.Random) -> list[dict]:
    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS + UNICODE) for _ in range(rng.randint(lo, hi))) + rng.choice(["?", ".", "!"])

    return [{"user": text(2, 12), "assistant": text(1, 40)} for _ in range(rng.randint(1, 3))]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A jsonl of sft records (text-only and with an image), with planted qa_filter drops; tokenizers."""
    root = tmp_path_factory.mktemp("tok_inputs")
    rng = random.Random(7)
    (root / "images").mkdir()
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (64 + 8 * i, 48), (40 * i, 90, 200)).save(buf, "PNG")
        (root / "images" / f"im{i}.png").write_bytes(buf.getvalue())
    rows = []
    for i in range(N):
        row = {"key": f"s{i:03d}", "turns": _questions_answers(rng)}
        if i % 4 == 0:
            row["images"] = [f"im{i % 3}.png"]
            if i % 8 == 0:
                row["turns"][0]["user"] = ""  # captioning: kept
        rows.append(row)
    planted = {"empty_answer": [5], "empty_question": [6], "repeated_turn": [7]}
    rows[5]["turns"][-1]["assistant"] = "  "
    rows[6]["turns"][0]["user"] = " "
    rows[7]["turns"].append(dict(rows[7]["turns"][0]))
    with open(root / "qa.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    corpus = [t for row in rows for turn in row["turns"] for t in turn.values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=350, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.save(str(root / "tokenizer.json"))
    transformers = pytest.importorskip("transformers")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>").save_pretrained(str(root / "fast"))
    # and a directory without tokenizer.json (a pure-Python WordPiece tokenizer: vocab.txt), loaded by AutoTokenizer
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"]))
    vocab = root / "vocab.txt"
    vocab.write_text("".join(w + "\n" for w, _ in sorted(wp.get_vocab().items(), key=lambda x: x[1])))
    slow_cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    slow_cls(vocab_file=str(vocab)).save_pretrained(str(root / "slow"))
    return {"root": root, "rows": rows, "planted": planted, "tokenizer": tok}


def _recipe(root: Path, tokenizer: dict) -> dict:
    return {
        "kind": "build",
        "name": "qa_tok",
        "sources": [
            {
                "name": "qa",
                "reader": "jsonl",
                "path": str(root / "qa.jsonl"),
                "image_root": str(root / "images"),
                "record": "sft",
                "partition_size": 25,
            }
        ],
        "steps": [{"step": "qa_filter"}],
        "output": {"kind": "sft", "max_samples_per_shard": 20},
        "tokenizer": tokenizer,
    }


def _check(out: Path, inputs: dict, count) -> None:
    rows = {r["key"]: r for r in inputs["rows"]}
    sidecar = pq.read_table(sorted(out.glob("qa_tok-*.parquet"))).to_pylist()
    dropped = {f"s{i:03d}" for ids in inputs["planted"].values() for i in ids}
    assert sorted(r["key"] for r in sidecar) == sorted(set(rows) - dropped)
    for r in sidecar:
        turns = rows[r["key"]]["turns"]
        answers = [t["assistant"] for t in turns]
        texts = [t["user"] for t in turns] + answers
        assert r["answer_tokens"] == sum(count(a) for a in answers), r["key"]
        assert r["text_tokens"] == sum(count(t) for t in texts), r["key"]
    m = read_manifest(out)
    assert m.totals["samples"] == len(sidecar)
    assert m.totals["text_tokens"] == sum(r["text_tokens"] for r in sidecar)
    assert m.totals["answer_tokens"] == sum(r["answer_tokens"] for r in sidecar)
    regex = sum(count_tokens(t["assistant"]) for r in sidecar for t in rows[r["key"]]["turns"])
    assert m.totals["answer_tokens"] != regex  # the tokenizer's counts, not the regex default's
    qa = m.accounting["sources"]["qa"]
    assert qa["dropped"] == {reason: len(ids) for reason, ids in inputs["planted"].items()}
    assert verify_dataset(out).ok


def test_build_with_tokenizer_json(inputs, tmp_path):
    root = inputs["root"]
    recipe = validate_recipe(_recipe(root, {"type": "tokenizer_json", "path": str(root / "tokenizer.json")}))
    tok = inputs["tokenizer"]
    out = tmp_path / "ds"
    build(recipe, out, workers=2, progress=False)  # spawned workers load the tokenizer themselves
    _check(out, inputs, lambda t: len(tok.encode(t, add_special_tokens=False).ids))


@pytest.mark.parametrize("layout", ["fast", "slow"])
def test_build_with_a_transformers_directory(inputs, tmp_path, layout):
    from transformers import AutoTokenizer

    directory = inputs["root"] / layout
    assert (directory / "tokenizer.json").exists() == (layout == "fast")
    hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    recipe = validate_recipe(_recipe(inputs["root"], {"type": "transformers", "path": str(directory)}))
    out = tmp_path / "ds"
    build(recipe, out, workers=1, progress=False)
    _check(out, inputs, lambda t: len(hf.encode(t, add_special_tokens=False)))
