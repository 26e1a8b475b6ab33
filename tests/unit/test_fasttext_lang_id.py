"""fastText language identification in the OBELICS filters: a real supervised model trained here on generated
text (English vs a generated language ``xx``), named in recipes, keeping and dropping documents and paragraphs
(``doc_lang_id``, ``paragraph_lang_id``); one-line errors for a missing package, a missing or wrong model; the
model's sha256 in the build's plan."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from curation.build.plan import plan_build
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import load_recipe, validate_recipe
from curation.recipe.loading import FILTER_LEVELS, FILTER_MODEL_PATHS, identity_doc, recipe_doc
from curation.sources.obelics import (
    DocumentFilterConfig,
    LangIdFilter,
    ObelicsDocument,
    ParagraphFilterConfig,
    check_document,
    filter_paragraphs,
)
from curation.sources.obelics.models import LEVELS, MODEL_PATH_FIELDS
from curation.text_models import FastTextLangId, lang_id_model, lang_id_text, require
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
    assert FILTER_MODEL_PATHS == MODEL_PATH_FIELDS and FILTER_LEVELS == LEVELS  # the two spellings agree
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
