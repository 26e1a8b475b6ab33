"""KenLM perplexity in the OBELICS filters: a hand-written ARPA model whose perplexities are computed by hand,
the OBELICS and CCNet normalisations, a SentencePiece tokenizer trained here, documents and paragraphs dropped
(``doc_perplexity``, ``paragraph_perplexity``); one-line errors for a missing package, a missing or wrong model
or tokenizer; the files' sha256 in the build's plan; KenLM binaries (probing and trie) of the same model; hostile
ARPA, binary and SentencePiece files (huge declared counts, truncated, padded) refused on one line, quickly and in
bounded memory."""

from __future__ import annotations

import hashlib
import resource
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

from curation.build.plan import plan_build
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.sources.obelics import (
    DocumentFilterConfig,
    ObelicsDocument,
    ParagraphFilterConfig,
    PerplexityFilter,
    check_document,
    filter_paragraphs,
)
from curation.text_models import KenLMPerplexity, normalize_ccnet, normalize_obelics, perplexity_model, perplexity_of
from tests.text_model_data import (
    ENGLISH,
    HAND_BIGRAMS,
    HAND_UNIGRAMS,
    RULES_OFF,
    obelics_recipe,
    obelics_row,
    train_sentencepiece,
    write_arpa,
    write_kenlm_binary,
    write_obelics,
)

pytest.importorskip("kenlm")  # the text_models extra (in .[dev]: CI runs every test below)


@pytest.fixture(scope="module")
def arpa(tmp_path_factory) -> Path:
    return write_arpa(tmp_path_factory.mktemp("lm") / "hand.arpa", HAND_UNIGRAMS, HAND_BIGRAMS)


def doc(text: str) -> ObelicsDocument:
    return ObelicsDocument([text, None], [None, "https://example.org/a.jpg"], [None, {"format": "jpg"}], {})


def only_perplexity(model: Path, **kw) -> DocumentFilterConfig:
    return DocumentFilterConfig(**RULES_OFF, perplexity=PerplexityFilter(model=str(model), **kw))


# log10 probabilities of HAND_UNIGRAMS / HAND_BIGRAMS, by hand (a missing bigram backs off: backoff(w1) + p(w2)):
# "the cat":  P(the|<s>) -0.2 + P(cat|the) -0.4 + P(</s>|cat) -0.3                     = -0.9 over 2 + 1 tokens
# "cat the":  (-0.5 + -0.9) + (-0.2 + -0.7) + (-0.3 + -0.5)                              = -3.1 over 3
# "dog":      <unk>: (-0.5 + -1.0) + P(</s>|<unk>) (0 + -0.5)                             = -2.0 over 2
# "":         P(</s>|<s>) = -0.5 + -0.5                                                   = -1.0 over 1
# "The cat":  "The" is <unk> (case kept): -1.5 + P(cat|<unk>) (0 + -0.9) + -0.3           = -2.7 over 3
# "the 0000 cat": -0.2 + P(<unk>|the) (-0.3 + -1.0) + (0 + -0.9) + -0.3                   = -2.7 over 4
BY_HAND = {
    "the cat": round(10 ** (0.9 / 3), 1),  # 2.0
    "cat the": round(10 ** (3.1 / 3), 1),  # 10.8
    "dog": 10.0,
    "": 10.0,
    "The cat": round(10 ** (2.7 / 3), 1),  # 7.9
    "the 1999 cat": round(10 ** (2.7 / 4), 1),  # 4.7: digits are 0s
}


def test_perplexities_by_hand(arpa):
    lm = KenLMPerplexity(str(arpa))
    assert {text: lm.perplexity(text) for text in BY_HAND} == BY_HAND
    assert BY_HAND["the cat"] == 2.0 and BY_HAND["cat the"] == 10.8 and BY_HAND["The cat"] == 7.9
    assert lm.perplexity("  the cat \t") == 2.0  # stripped
    # Control characters go, newlines too (as in OBELICS and CCNet): the words either side join ("thecat", <unk>).
    assert lm.tokens("the\ncat") == "thecat" and lm.perplexity("the\ncat") == 10.0
    assert perplexity_of(-0.9, 3) == pytest.approx(10**0.3)
    ccnet = KenLMPerplexity(str(arpa), normalization="ccnet")
    assert ccnet.perplexity("The cat") == 2.0  # lowercased
    assert perplexity_model(str(arpa)) is perplexity_model(str(arpa))  # loaded once per process


def test_the_normalisations():
    text = "  Héllo\u00a0World, 2023 — “quoted” … （ok）！\n\nNext\t"
    assert normalize_obelics(text) == 'Héllo World, 0000  -  "quoted" ... (ok)!Next'
    assert normalize_ccnet(text) == 'hello\u00a0world, 0000  -  "quoted" ... (ok)!next'  # no space list in CCNet
    assert normalize_obelics(" \n ") == normalize_ccnet(" \n ") == ""


def test_documents_and_paragraphs_are_dropped_by_perplexity(arpa):
    assert check_document(doc("the cat"), only_perplexity(arpa, max=5.0)) is None
    assert check_document(doc("cat the"), only_perplexity(arpa, max=5.0)) == "doc_perplexity"
    assert check_document(doc("cat the"), only_perplexity(arpa, max=10.8)) is None  # inclusive, on the rounded value
    assert check_document(doc("The cat"), only_perplexity(arpa, max=5.0)) == "doc_perplexity"
    assert check_document(doc("The cat"), only_perplexity(arpa, max=5.0, normalization="ccnet")) is None
    cfg = ParagraphFilterConfig(
        **RULES_OFF, spam_words_drop_at=None, perplexity=PerplexityFilter(model=str(arpa), max=5)
    )
    kept, removed = filter_paragraphs("the cat\n\ncat the\n\nthe cat", cfg)
    assert kept == "the cat\n\nthe cat" and removed == {"paragraph_perplexity": 1}
    assert ParagraphFilterConfig().perplexity is None and DocumentFilterConfig().perplexity is None  # off by default


def test_a_sentencepiece_tokenizer(tmp_path):
    sp_model = train_sentencepiece(tmp_path / "sp", ENGLISH, vocab_size=120)
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(sp_model)).encode(normalize_obelics(ENGLISH[0]), out_type=str)
    # A unigram model over the pieces of the first sentence: each known piece -1.0, </s> -0.5, anything else <unk> -3
    # (its one bigram, <unk> <unk>, is what the backoff gives too).
    known = sorted(set(pieces))
    unigrams = {"<unk>": (-3.0, 0.0), "<s>": (-99.0, 0.0), "</s>": (-0.5, 0.0)} | {p: (-1.0, 0.0) for p in known}
    lm = write_arpa(tmp_path / "pieces.arpa", unigrams, {("<unk>", "<unk>"): -3.0})  # KenLM needs a bigram
    scorer = KenLMPerplexity(str(lm), str(sp_model))
    assert scorer.tokens(ENGLISH[0]) == " ".join(pieces)
    assert scorer.perplexity(ENGLISH[0]) == round(10 ** ((len(pieces) * 1.0 + 0.5) / (len(pieces) + 1)), 1)
    other = spm.SentencePieceProcessor(model_file=str(sp_model)).encode(ENGLISH[5], out_type=str)
    log10_prob = sum(-1.0 if p in known else -3.0 for p in other) - 0.5
    assert scorer.perplexity(ENGLISH[5]) == round(10 ** (-log10_prob / (len(other) + 1)), 1)
    assert scorer.perplexity(ENGLISH[5]) > scorer.perplexity(ENGLISH[0])


def test_the_plan_records_model_and_tokenizer(arpa, tmp_path):
    sp_model = train_sentencepiece(tmp_path / "sp", ENGLISH, vocab_size=120)
    data = write_obelics(tmp_path / "data" / "a.parquet", [obelics_row([("text", "the cat"), ("image", "http://x/1")])])
    rule = {"model": str(arpa), "max": 1500, "tokenizer": str(sp_model)}
    plan = plan_build(validate_recipe(obelics_recipe(data, tmp_path / "cache", {}, {"perplexity": rule})), None)
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert plan.doc["source_inputs"] == {
        "web": {
            "filters.paragraph.perplexity.model": sha(arpa),
            "filters.paragraph.perplexity.tokenizer": sha(sp_model),
        }
    }


def test_one_line_errors_before_anything_is_written(arpa, tmp_path, monkeypatch):
    data = write_obelics(tmp_path / "data" / "a.parquet", [obelics_row([("text", "the cat"), ("image", "http://x/1")])])

    def fails(match: str, model: Path, tokenizer: Path | None = None) -> None:
        rule = {"model": str(model)} | ({"tokenizer": str(tokenizer)} if tokenizer else {})
        recipe = validate_recipe(obelics_recipe(data, tmp_path / "cache", {"perplexity": rule}))
        with pytest.raises(CurationError, match=match) as info:
            build(recipe, tmp_path / "out", progress=False)
        assert "\n" not in str(info.value) and "sources.web.filters.document.perplexity" in str(info.value)
        assert not (tmp_path / "out").exists()

    fails("does not exist", tmp_path / "missing.arpa")
    fails("is not a KenLM model", data)  # a parquet file
    broken = tmp_path / "broken.arpa"
    broken.write_text(arpa.read_text()[:80])  # cut in the unigrams
    fails("cannot load the KenLM model", broken)
    fails("tokenizer .* does not exist", arpa, tmp_path / "missing.model")
    fails("cannot load the SentencePiece model", arpa, arpa)
    fresh = shutil.copy(arpa, tmp_path / "fresh.arpa")  # a file this process never loaded
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as if the extra were not installed
    fails(r"needs the Python package 'kenlm'.*pip install 'vlm-curation\[text_models\]'", Path(fresh))
    monkeypatch.delitem(sys.modules, "kenlm")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    tokenizer = tmp_path / "t.model"
    tokenizer.write_bytes(b"x")
    fails(r"needs the Python package 'sentencepiece'", shutil.copy(arpa, tmp_path / "fresh2.arpa"), tokenizer)


# --------------------------------------------------------------------------------------------------
# Binary models and hostile files


def max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def refused(path: Path, blob: bytes, match: str, tokenizer: Path | None = None) -> None:
    """``blob`` as the model file ``path`` (or as the tokenizer, when given) is a one-line CurationError
    matching ``match``, within a second and without growing the peak memory by more than 64 MiB."""
    (tokenizer or path).write_bytes(blob)
    rss, start = max_rss_mib(), time.monotonic()
    with pytest.raises(CurationError, match=match) as info:
        KenLMPerplexity(str(path), None if tokenizer is None else str(tokenizer))
    assert time.monotonic() - start < 1.0
    assert max_rss_mib() - rss < 64
    assert "\n" not in str(info.value) and str(tokenizer or path) in str(info.value)


little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="the KenLM binaries were built little-endian")


@little_endian
@pytest.mark.parametrize("kind", ["probing", "trie"])
def test_binary_models_score_as_the_arpa(kind, tmp_path):
    path = write_kenlm_binary(tmp_path / f"hand.{kind}.bin", kind)
    lm = KenLMPerplexity(str(path))
    assert {text: lm.perplexity(text) for text in BY_HAND} == BY_HAND


@little_endian
@pytest.mark.parametrize("kind", ["probing", "trie"])
def test_hostile_binary_models(kind, tmp_path):
    data = write_kenlm_binary(tmp_path / "whole.bin", kind).read_bytes()
    path = tmp_path / "hostile.bin"
    # KenLM checks the file against the size its counts imply, but not the vocabulary strings that follow:
    # a model cut in them, or with bytes appended, loaded before.
    for fraction in (0.3, 0.6, 0.95):
        refused(path, data[: int(len(data) * fraction)], "truncated|does not end with the strings of its 5 words")
    refused(path, data[:-1], "does not end with the strings of its 5 words")
    refused(path, data + b"junk" * 10, "does not end with the strings of its 5 words")
    refused(path, data + b"\0" * 8, "does not end with the strings of its 5 words")

    def patched(offset: int, fmt: str, value: float) -> bytes:
        out = bytearray(data)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)

    # The header: 88 bytes of magic and test values, then order (uint8) at 88, ..., uint64 counts from 108.
    refused(path, patched(108, "<Q", 2**63), "declares 9223372036854775808 1-grams in a file of")
    refused(path, patched(116, "<Q", 2**40), "declares 1099511627776 2-grams")  # KenLM's sizes would overflow
    refused(path, patched(88, "<B", 7), r"order 7 is outside 1\.\.6")
    refused(path, patched(92, "<f", float("nan")), "probing multiplier nan")
    refused(path, patched(60, "<f", 2.0), "not a KenLM binary of format version 5")
    # The vocabulary's size after the header (probing: uint32 words at 132; trie: uint64 words besides <unk> at
    # 128), which KenLM trusts: a trie read past its vocabulary and crashed.
    offset, fmt = (132, "<I") if kind == "probing" else (128, "<Q")
    refused(path, patched(offset, fmt, 2**31 - (kind == "trie")), "the vocabulary declares 2147483648 words for 5")


def test_hostile_arpa_files(arpa, tmp_path):
    path, text = tmp_path / "hostile.arpa", arpa.read_bytes()
    # 92 bytes declaring 2**30 bigrams: KenLM sizes its tables by the counts first (18 bytes a bigram: 19 GB).
    bomb = b"\\data\\\nngram 1=2\nngram 2=1073741824\n\n\\1-grams:\n-1\t<unk>\t0\n-1\t<s>\t0\n\n\\2-grams:\n"
    refused(path, bomb.ljust(92, b"\n"), "truncated: the header declares 1073741826 n-grams, .* in a file of 92")
    refused(path, text.replace(b"ngram 2=3", b"ngram 2=4000000000"), "declares 4000000005 n-grams")
    refused(path, text.replace(b"ngram 2=3", b"ngram 2=" + b"9" * 40), "count of at most 20 digits")
    refused(path, text.replace(b"ngram 2=3", b"ngram 3=3"), "is not 'ngram 2=")
    seven = b"\\data\\\n" + b"".join(b"ngram %d=1\n" % n for n in range(1, 8)) + b"\n"
    refused(path, seven, "an order above 6")
    for fraction in (0.3, 0.6, 0.95):  # KenLM's reader is strict: its own one-line errors
        refused(path, text[: int(len(text) * fraction)], "cannot load the KenLM model")
    refused(path, text + b"junk\n", "cannot load the KenLM model")


def test_hostile_tokenizers(arpa, tmp_path):
    data = train_sentencepiece(tmp_path / "sp", ENGLISH, vocab_size=120).read_bytes()
    tokenizer = tmp_path / "hostile.model"
    for fraction in (0.3, 0.6, 0.95):
        refused(arpa, data[: int(len(data) * fraction)], "cannot load the SentencePiece model", tokenizer)
    refused(arpa, data + b"junk" * 10, "cannot load the SentencePiece model", tokenizer)
    refused(arpa, b"\0" * 1000, "cannot load the SentencePiece model", tokenizer)


def test_a_damaged_binary_never_scores_nan_nor_overflows(arpa):
    """A binary's body is not checked (KenLM's format has no checksum): garbled probabilities score a text
    NaN, which any maximum would keep, or far past the largest float."""
    assert perplexity_of(-1e6, 1) == float("inf")  # 10 ** 1e6

    class Garbled:
        def score(self, line: str, bos: bool, eos: bool) -> float:
            return float("nan")

    lm = KenLMPerplexity(str(arpa))
    lm.lm = Garbled()
    with pytest.raises(CurationError, match=r"scored a text NaN \(a damaged model\)"):
        lm.perplexity("the cat")
