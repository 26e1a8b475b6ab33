"""fastText language identification in the OBELICS filters: a real supervised model trained here on generated
text (English vs a generated language ``xx``), named in recipes, keeping and dropping documents and paragraphs
(``doc_lang_id``, ``paragraph_lang_id``); one-line errors for a missing package, a missing or wrong model; the
model's sha256 in the build's plan; hostile model files (a header claiming 2**30 words, truncated, padded,
garbled) refused on one line, quickly and in bounded memory, before fastText's loader reads them."""

from __future__ import annotations

import hashlib
import resource
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from curation.build.plan import plan_build
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from curation.recipe.loading import identity_doc, recipe_doc
from curation.sources.obelics import (
    DocumentFilterConfig,
    LangIdFilter,
    ObelicsDocument,
    ParagraphFilterConfig,
    check_document,
    filter_paragraphs,
)
from curation.sources.obelics.models import LEVELS, MODEL_PATH_FIELDS
from curation.text_models import FASTTEXT_MAGIC, FastTextLangId, lang_id_model, lang_id_text, require
from tests.text_model_data import (
    ENGLISH,
    RULES_OFF,
    foreign_text,
    obelics_recipe,
    obelics_row,
    train_lang_id,
    write_arpa,
    write_obelics,
)

pytest.importorskip("fasttext")  # the text_models extra (in .[dev]: CI runs every test below)

EN_TEXT = "The old library in the middle of the town was built more than a hundred years ago.\n\nIt has a reading room."
XX_TEXT = foreign_text()


@pytest.fixture(scope="module")
def lid(tmp_path_factory) -> Path:
    return train_lang_id(tmp_path_factory.mktemp("lid") / "lid.bin")


def doc(text: str) -> ObelicsDocument:
    return ObelicsDocument([text, None], [None, "https://example.org/a.jpg"], [None, {"format": "jpg"}], {})


def only_lang_id(model: Path, **kw) -> DocumentFilterConfig:
    return DocumentFilterConfig(**RULES_OFF, lang_id=LangIdFilter(model=str(model), **kw))


def test_the_model_predicts_the_language_of_a_lowercased_single_line(lid):
    model = FastTextLangId(str(lid))
    label, prob = model.predict(EN_TEXT.upper())  # newlines (fastText's predict refuses them) and case handled
    assert label == "en" and prob >= 0.9
    assert model.predict(XX_TEXT)[0] == "xx"
    assert model.score(EN_TEXT, "en") == prob
    assert model.score(XX_TEXT, "en") == 0.0  # the top label is another language: 0, as OBELICS used it
    assert lang_id_text("A\nB\n\nC") == "a b  c"
    assert lang_id_model(str(lid)) is lang_id_model(str(lid))  # loaded once per process


def test_documents_are_kept_or_dropped_by_language(lid):
    assert check_document(doc(EN_TEXT), only_lang_id(lid)) is None
    assert check_document(doc(XX_TEXT), only_lang_id(lid)) == "doc_lang_id"
    score = FastTextLangId(str(lid)).score(EN_TEXT, "en")
    assert check_document(doc(EN_TEXT), only_lang_id(lid, min_score=min(score, 1.0))) is None  # inclusive
    assert check_document(doc(XX_TEXT), only_lang_id(lid, min_score=0.0)) is None  # 0.0 >= 0.0
    assert check_document(doc(EN_TEXT), only_lang_id(lid, language="xx")) == "doc_lang_id"
    assert check_document(doc(XX_TEXT), only_lang_id(lid, language="__label__xx")) is None  # the prefix is optional


def test_paragraphs_are_removed_by_language(lid):
    cfg = ParagraphFilterConfig(**RULES_OFF, spam_words_drop_at=None, lang_id=LangIdFilter(model=str(lid)))
    kept, removed = filter_paragraphs("\n\n".join([ENGLISH[0], XX_TEXT, ENGLISH[1]]), cfg)
    assert kept == ENGLISH[0] + "\n\n" + ENGLISH[1]
    assert removed == {"paragraph_lang_id": 1}
    assert ParagraphFilterConfig().lang_id is None  # off at paragraph level by default, as in the original


def test_one_way_per_rule_and_the_identity_of_recipes_without_it(lid, tmp_path):
    with pytest.raises(ValidationError, match="not both"):
        DocumentFilterConfig(lang_id=LangIdFilter(model=str(lid)), lang_id_scorer=lambda t: 1.0)
    with pytest.raises(ValidationError, match=r"use lang_id.min_score"):
        DocumentFilterConfig(lang_id=LangIdFilter(model=str(lid)), min_lang_id=0.5)
    with pytest.raises(ValidationError):
        LangIdFilter(model=" ")
    with pytest.raises(ValidationError):
        LangIdFilter(model="x.bin", min_score=1.5)
    plain = validate_recipe(obelics_recipe(tmp_path / "data", tmp_path / "cache", {}))
    for doc_of in (identity_doc, recipe_doc):  # unset: out of the identity and the dump (recipes keep their hash)
        filters = doc_of(plain)["sources"][0]["filters"]
        assert "lang_id" not in filters["document"] and "perplexity" not in filters["paragraph"]
    on = validate_recipe(obelics_recipe(tmp_path / "data", tmp_path / "cache", {"lang_id": {"model": str(lid)}}))
    assert identity_doc(on)["sources"][0]["filters"]["document"]["lang_id"]["model"] == str(lid)


def test_model_paths_are_recipe_paths(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "web.yaml"
    recipe.write_text(
        "name: web\n"
        "sources:\n"
        "  - name: web\n"
        "    reader: obelics\n"
        "    path: data\n"
        "    filters:\n"
        "      document:\n"
        "        lang_id: {model: models/lid.176.bin, language: en, min_score: 0.8}\n"
        "        perplexity: {model: models/en.arpa.bin, max: 1500, tokenizer: models/en.sp.model}\n"
        "      paragraph:\n"
        "        lang_id: {model: '${models}/lid.176.bin'}\n"
        "vars:\n"
        "  models: /abs/models\n"
        "output: {kind: interleaved}\n"
    )
    assert MODEL_PATH_FIELDS["perplexity"] == ("model", "tokenizer") and set(LEVELS) == {"paragraph", "document"}
    document = load_recipe(str(recipe)).sources[0].filters.document
    models = tmp_path / "recipes" / "models"
    assert document.lang_id.model == str(models / "lid.176.bin")  # relative to the recipe file
    assert document.perplexity.model == str(models / "en.arpa.bin")
    assert document.perplexity.tokenizer == str(models / "en.sp.model")
    assert load_recipe(str(recipe)).sources[0].filters.paragraph.lang_id.model == "/abs/models/lid.176.bin"
    monkeypatch.chdir(tmp_path)
    moved = load_recipe(str(recipe), ["sources.web.filters.document.lang_id.model=mine/lid.bin"])
    assert moved.sources[0].filters.document.lang_id.model == str(tmp_path / "mine" / "lid.bin")  # --set: cwd


def test_the_plan_records_the_model_by_content(lid, tmp_path):
    data = write_obelics(tmp_path / "data" / "a.parquet", [obelics_row([("text", EN_TEXT), ("image", "http://x/1")])])
    recipe = validate_recipe(obelics_recipe(data, tmp_path / "cache", {"lang_id": {"model": str(lid)}}))
    plan = plan_build(recipe, None)
    digest = hashlib.sha256(lid.read_bytes()).hexdigest()
    assert plan.doc["source_inputs"] == {"web": {"filters.document.lang_id.model": digest}}
    plain = plan_build(validate_recipe(obelics_recipe(data, tmp_path / "cache", {})), None)
    assert "source_inputs" not in plain.doc  # nothing recorded without a model rule
    other = train_lang_id(tmp_path / "other.bin", seed=1)
    moved = plan_build(
        validate_recipe(obelics_recipe(data, tmp_path / "cache", {"lang_id": {"model": str(other)}})), None
    )
    assert moved.sha256 != plan.sha256  # another model is another build
    downloads = {p.spec["download_dir"] for p in plan.partitions} | {p.spec["download_dir"] for p in moved.partitions}
    assert len(downloads) == 2  # and another download cache: other documents survive


def test_one_line_errors_before_anything_is_written(lid, tmp_path, monkeypatch):
    data = write_obelics(tmp_path / "data" / "a.parquet", [obelics_row([("text", EN_TEXT), ("image", "http://x/1")])])

    def fails(model: Path, match: str) -> None:
        recipe = validate_recipe(obelics_recipe(data, tmp_path / "cache", {"lang_id": {"model": str(model)}}))
        with pytest.raises(CurationError, match=match) as info:
            build(recipe, tmp_path / "out", progress=False)
        assert "\n" not in str(info.value) and "sources.web.filters.document.lang_id" in str(info.value)
        assert not (tmp_path / "out").exists()

    fails(tmp_path / "missing.bin", "does not exist")
    fails(write_arpa(tmp_path / "lm.arpa", {"<unk>": (-1.0, 0.0)}), "is not a fastText model")
    (tmp_path / "dir.bin").mkdir()
    fails(tmp_path / "dir.bin", "not a regular file")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(lid.read_bytes()[:8])
    fails(truncated, "fastText")
    fresh = tmp_path / "fresh.bin"  # a file this process never loaded
    shutil.copy(lid, fresh)
    monkeypatch.setitem(sys.modules, "fasttext", None)  # as if the extra were not installed
    fails(fresh, r"needs the Python package 'fasttext'.*pip install 'vlm-curation\[text_models\]'")
    with pytest.raises(CurationError, match="text_models"):
        require("fasttext", "lang_id")


# --------------------------------------------------------------------------------------------------
# Hostile model files


def max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def refused(path: Path, blob: bytes, match: str) -> str:
    """``blob`` as the model file ``path`` is a one-line CurationError matching ``match``, within a second and
    without growing the process's peak memory by more than 64 MiB."""
    path.write_bytes(blob)
    rss, start = max_rss_mib(), time.monotonic()
    with pytest.raises(CurationError, match=match) as info:
        FastTextLangId(str(path))
    assert time.monotonic() - start < 1.0
    assert max_rss_mib() - rss < 64
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    return str(info.value)


def ft_header(*, dim=2, bucket=0, minn=0, maxn=0, word_ngrams=1, version=12, size=2, nwords=1, nlabels=1) -> bytes:
    """The first 92 bytes of a fastText model: magic, version, the arguments (softmax loss, supervised), and the
    dictionary's header (size, nwords, nlabels, ntokens, no pruned index)."""
    args = struct.pack("<12id", dim, 5, 5, 1, 5, word_ngrams, 3, 3, bucket, minn, maxn, 100, 1e-4)
    return struct.pack("<ii", FASTTEXT_MAGIC, version) + args + struct.pack("<iiiqq", size, nwords, nlabels, 10, -1)


def tiny_model(*, weights=(1.0, 0.5), count=5, label_type=1, input_rows=1, **header) -> bytes:
    """A whole fastText classifier written by hand: the word "hello", the label "__label__en", dim 2, no
    n-grams; dense 1 x 2 input and output matrices."""
    entries = b"hello\0" + struct.pack("<qb", count, 0) + b"__label__en\0" + struct.pack("<qb", 5, label_type)
    matrix = struct.pack("<?qq", False, input_rows, 2) + struct.pack(f"<{2 * input_rows}f", *weights * input_rows)
    return ft_header(**header) + entries + matrix + struct.pack("<?qq2f", False, 1, 2, 0.5, 1.0)


def test_a_hand_written_model_loads_and_predicts(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(tiny_model())
    assert FastTextLangId(str(path)).predict("hello") == ("en", pytest.approx(1.0, abs=1e-4))  # one label


def test_weights_that_overflow_are_an_error_not_a_nan_score(tmp_path):
    path = tmp_path / "overflow.bin"
    path.write_bytes(tiny_model(weights=(3e38, 3e38)))  # finite, so loaded; their sums are not
    with pytest.raises(CurationError, match="failed on a text: a NaN probability"):
        FastTextLangId(str(path)).predict("hello")


def test_hostile_headers_are_refused_before_fasttext_reads(tmp_path):
    path = tmp_path / "hostile.bin"
    # What the review found: 92 bytes whose header claims 2**30 words (fastText read for minutes, 11 GB).
    bomb = ft_header(size=2**30, nwords=2**30 - 1, nlabels=1)
    assert len(bomb) == 92
    refused(path, bomb, r"truncated: a dictionary of 1073741824 entries")
    refused(path, b"\0\0\0\0" + tiny_model()[4:], "is not a fastText model")
    refused(path, tiny_model(dim=2**30), r"dim 1073741824 is outside 1\.\.10000")
    refused(path, tiny_model(version=13), "format version 13")
    refused(path, tiny_model(maxn=6, minn=3), "bucket is 0 but the model hashes")  # n-gram hashes modulo 0
    refused(path, tiny_model(word_ngrams=2), "bucket is 0")
    refused(path, tiny_model(size=3), "dictionary's header is inconsistent")
    refused(path, tiny_model(count=10**15), "dictionary entry 0 has count")  # fastText's tree sentinel
    refused(path, tiny_model(count=-1), "dictionary entry 0 has count -1")
    refused(path, tiny_model(label_type=0), r"dictionary entry 1 has type 0, expected 1 \(label\)")
    refused(path, tiny_model(input_rows=5), r"the input matrix is 5 x 2, the dictionary and arguments say 1 x 2")
    refused(path, tiny_model(weights=(float("nan"), 0.5)), "NaN or infinite")
    refused(path, tiny_model() + b"\0", "1 bytes after the end of the model")


def test_a_truncated_or_padded_real_model_is_refused(lid, tmp_path):
    data, path = lid.read_bytes(), tmp_path / "cut.bin"
    for fraction in (0.3, 0.6, 0.95):  # before: loaded, and predicted ("en", 0.50001) for every text
        refused(path, data[: int(len(data) * fraction)], "truncated")
    refused(path, data[:-1], r"truncated: the output matrix \(2 x 16 float32\)")
    refused(path, data[:100], "truncated")
    refused(path, data + b"junk" * 10, "40 bytes after the end of the model")
    refused(path, data[:8] + struct.pack("<i", 2**30) + data[12:], "dim 1073741824")
    path.write_bytes(data)
    assert FastTextLangId(str(path)).predict(EN_TEXT)[0] == "en"  # the whole file still loads


def test_quantized_models(lid, tmp_path):
    """A .ftz (fastText's quantize: product-quantized input, here with pruned n-grams and quantized norms) is
    checked the same way: every count against the file, the file ending where the output matrix does."""
    import fasttext

    model = fasttext.FastText._FastText(model_path=str(lid))
    model.quantize(cutoff=2000, qnorm=True)
    ftz = tmp_path / "lid.ftz"
    model.save_model(str(ftz))
    quantized = FastTextLangId(str(ftz))
    assert quantized.predict(EN_TEXT)[0] == "en" and quantized.predict(XX_TEXT)[0] == "xx"
    data, path = ftz.read_bytes(), tmp_path / "cut.ftz"
    for fraction in (0.3, 0.6, 0.95):
        refused(path, data[: int(len(data) * fraction)], "truncated")
    refused(path, data + b"\0" * 8, "8 bytes after the end of the model")
