"""KenLM perplexity in the OBELICS filters: a hand-written ARPA model whose perplexities are computed by hand,
the OBELICS and CCNet normalisations, a SentencePiece tokenizer trained here, documents and paragraphs dropped
(``doc_perplexity``, ``paragraph_perplexity``); one-line errors for a missing package, a missing or wrong model
or tokenizer; the files' sha256 in the build's plan."""

from __future__ import annotations

import hashlib
import shutil
import sys
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
