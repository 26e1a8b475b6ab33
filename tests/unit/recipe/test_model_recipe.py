"""Recipes with models: steps name declared models, steps over stored embeddings follow an embed step, each
embedding is stored once, clip_score's keep_top_fraction becomes a keep_top step, model fields are checked."""

from __future__ import annotations

import pytest

from curation.errors import RecipeError
from curation.recipe import validate_recipe
from curation.recipe.loading import recipe_hash

SOURCES = [{"name": "a", "reader": "jsonl", "path": "x.jsonl"}]


def _recipe(steps: list[dict], models: dict | None = None) -> dict:
    return {
        "name": "m",
        "sources": SOURCES,
        "models": models
        if models is not None
        else {"clip": {"path": "clip"}, "sscd": {"path": "s.pt", "kind": "torchscript", "image_size": 64}},
        "steps": steps,
        "output": {"kind": "pair"},
    }


@pytest.mark.parametrize(
    ("steps", "models", "message"),
    [
        ([{"step": "embed", "model": "clipp"}], None, "no model named 'clipp'; did you mean 'clip'"),
        ([{"step": "semantic_dedup", "model": "sscd"}], None, "add an earlier step `embed` with model: sscd"),
        (
            [
                {"step": "embed", "model": "clip", "image": False, "text": True},
                {"step": "semantic_dedup", "model": "clip"},
            ],
            None,
            "reads the stored image embeddings of 'clip'",
        ),
        (
            [{"step": "embed", "model": "clip"}, {"step": "embed", "model": "clip", "name": "again"}],
            None,
            "already stored by steps.0",
        ),
        ([{"step": "embed", "model": "clip", "image": False}], None, "image: true or text: true"),
        ([], {"t": {"path": "t.pt", "kind": "torchscript"}}, "needs image_size"),
        ([], {"o": {"path": "w.bin", "kind": "open_clip"}}, "needs arch"),
        ([], {"c": {"path": "c", "device": "gpu"}}, "device"),
        ([{"step": "keep_top", "score": "s", "fraction": 0}], None, "fraction"),
    ],
)
def test_bad_model_recipes_name_the_problem(steps, models, message):
    with pytest.raises(RecipeError, match=message):
        validate_recipe(_recipe(steps, models))


def test_keep_top_fraction_becomes_a_keep_top_step_after_the_record_steps():
    recipe = validate_recipe(
        _recipe(
            [
                {"step": "embed", "model": "sscd"},
                {"step": "clip_score", "model": "clip", "keep_top_fraction": 0.3, "name": "cs"},
                {"step": "semantic_dedup", "model": "sscd"},
            ]
        )
    )
    steps = [(s.step, s.name) for s in recipe.steps]
    assert steps == [("embed", None), ("clip_score", "cs"), ("keep_top", "cs_top"), ("semantic_dedup", None)]
    top = recipe.steps[2]
    assert (top.score, top.fraction, top.per) == ("cs", 0.3, "source")
    again = validate_recipe(recipe.model_dump(mode="json"))  # the dumped recipe builds the same thing
    assert again == recipe and recipe_hash(again) == recipe_hash(recipe)


def test_keep_top_ranks_a_score_that_exists():
    steps = [{"step": "keep_top", "score": "clipscore", "fraction": 0.5}]
    with pytest.raises(RecipeError, match="no earlier step writes 'clipscore'"):
        validate_recipe(_recipe([{"step": "clip_score", "model": "clip"}, *steps]))
    validate_recipe(_recipe([{"step": "clip_score", "model": "clip"}, {**steps[0], "score": "clip_score"}]))
    recipe = _recipe(steps)
    recipe["output"]["sidecar_scores"] = ["clipscore"]  # a reader's meta number (e.g. LAION similarity)
    validate_recipe(recipe)


def test_errors_name_the_steps_as_written_and_repeated_steps_get_valid_score_names():
    steps = [
        {"step": "clip_score", "model": "clip", "keep_top_fraction": 0.5},
        {"step": "semantic_dedup", "model": "sscd"},  # steps.1 as written (the keep_top step comes later)
    ]
    with pytest.raises(RecipeError, match=r"steps\.1 \(semantic_dedup\)"):
        validate_recipe(_recipe(steps))
    two = validate_recipe(
        _recipe(
            [{"step": "clip_score", "model": "clip", "keep_top_fraction": 0.5}, {"step": "clip_score", "model": "clip"}]
        )
    )
    assert [s.score for s in two.steps if s.step == "keep_top"] == ["clip_score_1"]


def test_model_names_are_valid_in_embedding_file_names():
    for bad in ("clip-", "-clip", "a--b", "a.b"):
        with pytest.raises(RecipeError, match="models"):
            validate_recipe(_recipe([], {bad: {"path": "clip"}}))


def test_fields_added_later_leave_old_recipes_identity_and_dump_unchanged():
    from curation.recipe.loading import identity_doc, recipe_doc

    plain = validate_recipe({"name": "m", "sources": SOURCES, "output": {"kind": "pair"}})
    for doc in (identity_doc(plain), recipe_doc(plain)):
        assert "models" not in doc and "turn_ratings" not in doc["output"]
    used = validate_recipe(_recipe([{"step": "embed", "model": "clip"}]))
    assert "models" in identity_doc(used) and "models" in recipe_doc(used)
    assert validate_recipe(recipe_doc(used)) == used


def test_merge_qa_is_refused_where_turns_carry_ratings():
    recipe = _recipe([{"step": "merge_qa"}])
    recipe["output"] = {"kind": "sft", "turn_ratings": ["relevance"]}
    with pytest.raises(RecipeError, match=r"merge_qa\) would append turns without their per-turn ratings"):
        validate_recipe(recipe)
