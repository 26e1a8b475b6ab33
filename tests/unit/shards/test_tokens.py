"""Pluggable token counters: real tokenizers built offline, counted exactly, batch == single, cached, fingerprinted."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from shards import tokens
from shards.tokens import (
    REGEX_FINGERPRINT,
    TokenizerError,
    count_many,
    count_tokens,
    make_token_counter,
    tokenizer_fingerprint,
)

CORPUS = [
    "What is shown in the image? A red car parked next to a tree.",
    "How many cats are there? Two black cats, sleeping on a sofa.",
    "Combien de chats ? Deux chats noirs — très mignons.",
    "数学题：2+2等于几？答案是4。",
    "Transcribe the text of this page. Invoice #4411, total: $1,234.56",
] * 20
TEXTS = [
    "What is shown in the image?",  # ascii, in the training corpus
    "A zebra juggles quixotic xylophones!",  # ascii, mostly unseen words
    "Très mignons — chats noirs; naïve façade, Ærøskøbing",  # accented latin
    "数学题：2+2等于几？ 🐱🚗 Привет, мир!",  # CJK, emoji, cyrillic
    "",
    "   ",
    "line one\nline two\n\n\ttabbed",
    "word " * 300,
    "How many cats are there?",
    "Two.",
    "Transcribe the text of this page.",
    "Invoice #4411, total: $1,234.56 (due 2024-05-01)",
    "The chart shows revenue rising from 12% to 57% between 2019 and 2023.",
    " leading and trailing spaces ",
    "ALL CAPS AND MiXeD cAsE",
]


def _bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    )
    return tok


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """tokenizer.json files (BPE, WordPiece), a transformers directory with tokenizer.json, and one without."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tokenizers")
    bpe, wp = _bpe(), _wordpiece()
    bpe.save(str(root / "bpe.json"))
    wp.save(str(root / "wordpiece.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(root / "fast"))
    # A "slow" (pure Python) WordPiece tokenizer saves only vocab.txt + tokenizer_config.json.
    vocab = root / "vocab.txt"
    vocab.write_text("".join(w + "\n" for w, _ in sorted(wp.get_vocab().items(), key=lambda x: x[1])))
    slow_cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    slow_cls(vocab_file=str(vocab)).save_pretrained(str(root / "slow"))
    if (root / "slow" / "tokenizer.json").exists():
        pytest.skip("this transformers version always saves a tokenizer.json")
    return {
        "bpe": root / "bpe.json",
        "wordpiece": root / "wordpiece.json",
        "fast": root / "fast",
        "slow": root / "slow",
    }


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test loads its own counters (the per-process cache and its memo start empty)."""
    monkeypatch.setattr(tokens, "_CACHE", {})


def _expected_json(file: Path, texts: list[str]) -> list[int]:
    tok = Tokenizer.from_file(str(file))
    return [len(tok.encode(t, add_special_tokens=False).ids) for t in texts]


def _expected_transformers(directory: Path, texts: list[str]) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return [len(tok.encode(t, add_special_tokens=False)) for t in texts]


# ---- counting ----------------------------------------------------------------------------------------------
def test_regex_is_the_default_and_unchanged():
    assert make_token_counter() is count_tokens
    assert make_token_counter("regex", None) is count_tokens
    assert count_tokens("Hello, world!") == 4
    assert count_many(count_tokens, ["a b", "", "c."]) == 4


@pytest.mark.parametrize("name", ["bpe", "wordpiece"])
def test_tokenizer_json_counts_equal_the_tokenizer(built, name):
    expected = _expected_json(built[name], TEXTS)
    assert expected[0] > 0 and expected[3] > 0 and expected[4] == 0  # the texts exercise the tokenizer
    counter = make_token_counter("tokenizer_json", str(built[name]))
    assert [counter(t) for t in TEXTS] == expected


@pytest.mark.parametrize("name", ["bpe", "wordpiece"])
def test_batch_equals_single(built, name):
    expected = _expected_json(built[name], TEXTS)
    batch = make_token_counter("tokenizer_json", str(built[name]))
    calls = []
    many = batch._many
    batch._many = lambda texts: calls.append(len(texts)) or many(texts)
    assert batch.count_batch(TEXTS) == expected  # a fresh counter: encoded as one batch
    assert calls == [len(TEXTS) - 1]  # the empty text is not encoded
    assert count_many(batch, TEXTS) == sum(expected)
    assert calls == [len(TEXTS) - 1] * 2
    tokens._CACHE.clear()
    single = make_token_counter("tokenizer_json", str(built[name]))
    assert single is not batch
    assert [single(t) for t in TEXTS] == expected
    assert count_many(single, []) == 0 and count_many(single, ["", ""]) == 0
    tokens._CACHE.clear()
    small = make_token_counter("tokenizer_json", str(built[name]))
    small._many = None  # below the batch size, texts are encoded one by one
    assert small.count_batch(TEXTS[:3]) == expected[:3]
    assert small.count_batch(TEXTS[:3] + TEXTS[:6]) == expected[:3] + expected[:6]
    assert count_many(small, TEXTS[:1]) == expected[0]


def test_transformers_directory_with_tokenizer_json(built):
    expected = _expected_transformers(built["fast"], TEXTS)
    assert expected == _expected_json(built["bpe"], TEXTS)
    counter = make_token_counter("transformers", str(built["fast"]))
    assert counter.count_batch(TEXTS) == expected
    assert [counter(t) for t in TEXTS] == expected
    assert counter._one.__qualname__.startswith("_from_tokenizer_json")  # tokenizers, not transformers


def test_transformers_directory_without_tokenizer_json(built):
    assert sorted(p.name for p in built["slow"].iterdir()) == ["tokenizer_config.json", "vocab.txt"]
    expected = _expected_transformers(built["slow"], TEXTS)
    assert expected == _expected_json(built["wordpiece"], TEXTS)  # the same vocabulary, the same counts
    counter = make_token_counter("transformers", str(built["slow"]))
    assert counter.count_batch(TEXTS) == expected
    tokens._CACHE.clear()
    counter = make_token_counter("transformers", str(built["slow"]))
    assert [counter(t) for t in TEXTS] == expected
    assert count_many(counter, TEXTS) == sum(expected)


def test_a_tokenizer_json_in_a_directory_is_accepted(built):
    counter = make_token_counter("tokenizer_json", str(built["fast"]))
    assert counter.count_batch(TEXTS) == _expected_json(built["fast"] / "tokenizer.json", TEXTS)


def test_records_count_each_text_once(built):
    """count_record counts a conversation's texts once and takes the answers' share from those counts."""
    from schemas import PairRecord, SftRecord, Turn
    from shards.tokens import count_record

    counter = make_token_counter("tokenizer_json", str(built["bpe"]))
    turns = [Turn(user=TEXTS[0], assistant=TEXTS[1]), Turn(user=TEXTS[2], assistant=TEXTS[3])]
    sft = SftRecord(key="k", source="s", images=[], turns=turns)
    expected = _expected_json(built["bpe"], TEXTS[:4])
    assert count_record(counter, sft) == (sum(expected), expected[1] + expected[3])
    pair = PairRecord.model_construct(key="p", source="s", meta={}, image=b"", caption=TEXTS[0])
    assert count_record(count_tokens, pair) == (count_tokens(TEXTS[0]),) * 2


# ---- cache and fingerprint ---------------------------------------------------------------------------------
def test_cached_per_process_until_the_file_changes(built, tmp_path):
    file = tmp_path / "tokenizer.json"
    shutil.copy(built["bpe"], file)
    first = make_token_counter("tokenizer_json", str(file))
    assert make_token_counter("tokenizer_json", str(file)) is first
    fp = tokenizer_fingerprint("tokenizer_json", str(file))
    assert fp == hashlib.sha256(file.read_bytes()).hexdigest()
    assert fp == tokenizer_fingerprint("tokenizer_json", str(built["bpe"]))  # content, not location

    shutil.copy(built["wordpiece"], file)
    second = make_token_counter("tokenizer_json", str(file))
    assert second is not first
    assert second.count_batch(TEXTS) == _expected_json(built["wordpiece"], TEXTS)
    assert tokenizer_fingerprint("tokenizer_json", str(file)) != fp


def test_directory_fingerprint_covers_the_tokenizer_files(built, tmp_path):
    assert tokenizer_fingerprint() == tokenizer_fingerprint("regex") == REGEX_FINGERPRINT
    d = tmp_path / "slow"
    shutil.copytree(built["slow"], d)
    fp = tokenizer_fingerprint("transformers", str(d))
    assert fp == tokenizer_fingerprint("transformers", str(built["slow"]))
    (d / "README.md").write_text("not a tokenizer file")
    assert tokenizer_fingerprint("transformers", str(d)) == fp
    counter = make_token_counter("transformers", str(d))
    with (d / "vocab.txt").open("a") as f:
        f.write("zebra\n")
    assert tokenizer_fingerprint("transformers", str(d)) != fp
    assert make_token_counter("transformers", str(d)) is not counter
    fast_fp = tokenizer_fingerprint("transformers", str(built["fast"]))
    assert fast_fp not in (fp, tokenizer_fingerprint("tokenizer_json", str(built["fast"])))


# ---- errors ------------------------------------------------------------------------------------------------
def test_errors_are_clear_one_liners(built, tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"not": "a tokenizer"}))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = [
        (("tokenizer_json", None), "tokenizer.path is required for type 'tokenizer_json'"),
        (("transformers", ""), "tokenizer.path is required for type 'transformers'"),
        (("tokenizer_json", str(tmp_path / "nope.json")), "tokenizer.path: no tokenizer.json at "),
        (("tokenizer_json", str(empty_dir)), "tokenizer.path: no tokenizer.json at "),
        (("transformers", str(tmp_path / "nope")), "tokenizer.path: no tokenizer directory at "),
        (("transformers", str(empty_dir)), "is not a tokenizer directory (no tokenizer.json or tokenizer_config.json)"),
        (("transformers", str(built["bpe"])), "is a file; type transformers takes a tokenizer directory"),
        (("sentencepiece", "x"), "tokenizer.type: unknown type 'sentencepiece'; expected one of regex, "),
        (("regex", "x"), "tokenizer.path is only used with type tokenizer_json or transformers"),
    ]
    for args, message in cases:
        for fn in (make_token_counter, tokenizer_fingerprint):
            with pytest.raises(TokenizerError) as info:
                fn(*args)
            text = str(info.value)
            assert message in text and "\n" not in text, (fn.__name__, args, text)
            assert isinstance(info.value, ValueError)
    # found but unreadable: an error when loading (the fingerprint only hashes the file)
    with pytest.raises(TokenizerError, match=r"^tokenizer.path: .*bad.json is not a valid tokenizer.json \(") as info:
        make_token_counter("tokenizer_json", str(bad_json))
    assert "\n" not in str(info.value)


def test_a_broken_tokenizer_directory_is_one_line(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "tokenizer_config.json").write_text("{ not json")
    with pytest.raises(TokenizerError, match=r"^tokenizer.path: cannot load the tokenizer in .*broken \(") as info:
        make_token_counter("transformers", str(d))
    assert "\n" not in str(info.value)


def test_transformers_not_installed(built, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(TokenizerError, match=r"has no tokenizer.json.*transformers package.*not installed"):
        make_token_counter("transformers", str(built["slow"]))
    counter = make_token_counter("transformers", str(built["fast"]))  # tokenizer.json: no transformers needed
    assert counter.count_batch(TEXTS) == _expected_json(built["bpe"], TEXTS)
