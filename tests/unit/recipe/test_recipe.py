"""Recipes are data: validated with errors that name the path, the value and the fix."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from curation.errors import RecipeError
from curation.recipe import (
    apply_override,
    builtin_recipes,
    load_recipe,
    load_yaml,
    recipe_hash,
    recipe_json_schema,
    validate_recipe,
)
from curation.recipe.loading import YamlLimitError

BASE = {
    "name": "t",
    "sources": [{"name": "caps", "reader": "jsonl", "path": "/data/x.jsonl"}],
    "steps": [{"step": "image_size", "min_side": 32}, {"step": "exact_image_dedup"}],
    "output": {"kind": "pair"},
}


def _err(data) -> str:
    with pytest.raises(RecipeError) as exc:
        validate_recipe(data)
    return str(exc.value)


def _with(**top):
    data = json.loads(json.dumps(BASE))
    data.update(top)
    return data


def test_valid_recipe_and_defaults():
    r = validate_recipe(BASE)
    assert r.sources[0].partition_size == 10_000 and r.output.max_samples_per_shard == 10_000
    assert r.shard_prefix() == "t"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with(stpes=[]), "stpes: unknown key 'stpes'; did you mean 'steps'?"),
        (
            _with(sources=[{"name": "c", "reader": "jsonl", "pathh": "x"}]),
            "sources.0.pathh: unknown key 'pathh'; did you mean 'path'?",
        ),
        (_with(steps=[{"step": "image_sise"}]), "steps.0: unknown type 'image_sise'; did you mean 'image_size'?"),
        (
            _with(steps=[{"step": "image_size", "min_sied": 3}]),
            "steps.0.min_sied: unknown key 'min_sied'; did you mean 'min_side'?",
        ),
        (_with(output={"kind": "pairs"}), "output.kind: got 'pairs'"),
        (_with(steps=[{"step": "image_size", "min_side": "big"}]), "steps.0.min_side: Input should be a valid integer"),
        (
            _with(steps=[{"step": "image_size", "min_side": 0}]),
            "steps.0.min_side: Input should be greater than or equal to 1 (got 0)",
        ),
        (_with(sources=[]), "sources: List should have at least 1 item"),
        (_with(kind="bild"), "unknown recipe kind 'bild'; did you mean 'build'?"),
    ],
)
def test_errors_name_path_value_and_fix(data, expected):
    assert expected in _err(data)


def test_duplicate_source_names():
    data = _with(sources=[BASE["sources"][0], BASE["sources"][0]])
    assert "source names must be unique; repeated: caps" in _err(data)


def test_global_steps_must_come_last():
    data = _with(steps=[{"step": "exact_image_dedup"}, {"step": "image_decode"}])
    assert "steps.1 (image_decode) comes after the global step steps.0" in _err(data)


def test_set_overrides_by_index_by_name_and_nested():
    data = json.loads(json.dumps(BASE))
    apply_override(data, "steps.0.min_side=64")
    apply_override(data, "sources.caps.partition_size=100")
    apply_override(data, "output.rejects=true")
    apply_override(data, "sources.caps.fields.caption=text")
    r = validate_recipe(data)
    assert r.steps[0].min_side == 64 and r.sources[0].partition_size == 100 and r.output.rejects is True
    assert r.sources[0].fields == {"caption": "text"}


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("steps.9.min_side=1", "index 9 out of range"),
        ("sources.capz.path=x", "no item named 'capz'; did you mean 'caps'?"),
        ("output.kind.deeper=1", "output.kind is a value, not a section"),
        ("no_equals_sign", "expected dotted.path=value"),
    ],
)
def test_bad_overrides(assignment, expected):
    data = json.loads(json.dumps(BASE))
    with pytest.raises(RecipeError) as exc:
        apply_override(data, assignment)
    assert expected in str(exc.value)


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(
        RecipeError, match=re.escape("steps.0.min_sidee: unknown key 'min_sidee'; did you mean 'min_side'")
    ):
        load_recipe(str(path), ["steps.0.min_sidee=3"])
    with pytest.raises(
        RecipeError, match=re.escape("output.max_samples_per_shard: Input should be greater than or equal to 1")
    ):
        load_recipe(str(path), ["output.max_samples_per_shard=0"])


def test_relative_paths_resolve_against_the_recipe_file_and_set_against_cwd(tmp_path, monkeypatch):
    data = json.loads(json.dumps(BASE))
    data["sources"][0]["path"] = "inputs/x.jsonl"
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    assert load_recipe(str(path)).sources[0].path == str(tmp_path / "sub" / "inputs" / "x.jsonl")
    assert load_recipe(str(path), ["sources.caps.path=other.jsonl"]).sources[0].path == str(tmp_path / "other.jsonl")


def test_recipes_are_never_evaluated(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned > /tmp/pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(path))


def test_builtin_recipes_by_name():
    names = builtin_recipes()
    assert names.get("demo")
    assert load_recipe("demo").name == "demo"
    with pytest.raises(RecipeError, match="did you mean 'demo'"):
        load_recipe("dmeo")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("missing/recipe.yaml")


def test_recipe_hash_changes_with_content_only():
    a = validate_recipe(BASE)
    b = validate_recipe(json.loads(json.dumps(BASE)))
    assert recipe_hash(a) == recipe_hash(b)
    c = json.loads(json.dumps(BASE))
    c["steps"][0]["min_side"] = 33
    assert recipe_hash(validate_recipe(c)) != recipe_hash(a)


def test_json_schema_export_describes_the_recipe():
    schema = recipe_json_schema()
    assert schema["title"] == "vlm-curation recipe (build, mixture or selection)"
    build, mixture = schema["$defs"]["BuildRecipe"], schema["$defs"]["MixtureRecipe"]
    assert {"sources", "steps", "output", "tokenizer", "vars"} <= set(build["properties"])
    assert {"datasets", "components", "total_answer_tokens"} <= set(mixture["properties"])
    text = json.dumps(schema)
    tags = ("jsonl", "parquet", "shards", "cauldron", "llava", "text_length", "qa_filter", "near_dup_images",
            "near_dup_text", "decontaminate", "merge_qa", "exact_image_dedup", "answer_share")  # fmt: skip
    for tag in tags:
        assert f'"{tag}"' in text


def test_every_builtin_recipe_validates():
    for name in builtin_recipes():
        assert load_recipe(name).name
    assert Path(__file__).parents[3].joinpath("recipes", "demo.yaml").is_file()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"sources": [{**BASE["sources"][0], "fields": {"imagee": "x"}}]},
            "'imagee' is not a field of pair records; did you mean 'image'?",
        ),
        (
            {"sources": [{**BASE["sources"][0], "record": "sft", "fields": {"caption": "x"}}]},
            "'caption' is not a field of sft records",
        ),
        (
            {"steps": [{"step": "text_length", "min_chars": 10, "max_chars": 5}]},
            "min_chars (10) is greater than max_chars (5)",
        ),
        (
            {"steps": [{"step": "image_size", "min_side": 100, "max_side": 50}]},
            "min_side (100) is greater than max_side (50)",
        ),
        ({"steps": [{"step": "text_length", "name": "read"}]}, "the name 'read' is reserved"),
        (
            {"steps": [{"step": "text_length", "name": "x"}, {"step": "image_decode", "name": "x"}]},
            "'x' is already used by steps.0",
        ),
        (
            {
                "steps": [
                    {"step": "text_length", "name": "text_length#2"},
                    {"step": "text_length"},
                    {"step": "text_length"},
                ]
            },
            "already used",
        ),
        ({"steps": [{"name": "x"}]}, "steps.0: missing 'step': say which step this is"),
    ],
)
def test_configuration_that_cannot_work_is_refused(change, expected):
    assert expected in _err(_with(**change))


def test_set_into_a_missing_list_says_so():
    data = json.loads(json.dumps(BASE))
    del data["steps"]
    with pytest.raises(RecipeError, match="the recipe has no 'steps' list to index into"):
        apply_override(data, "steps.5.min_side=3")


def test_yaml_errors_are_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: [unclosed\nsources: x\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(str(path))
    assert "\n" not in str(exc.value) and "not valid YAML" in str(exc.value)


def test_a_local_directory_does_not_hide_a_builtin_recipe(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_recipe("demo").name == "demo"


def test_yaml_booleans_are_only_true_and_false():
    data = json.loads(json.dumps(BASE))
    apply_override(data, "name=no")
    apply_override(data, "output.rejects=true")
    assert data["name"] == "no" and data["output"]["rejects"] is True


def _vars_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sub" / "r.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


VARS_RECIPE = """
name: v
vars: {root: data, n: 5}
sources:
  - {name: a, reader: jsonl, path: "${root}/a.jsonl", image_root: "${root}/img", limit: 3}
steps:
  - {step: text_length, name: "len$${n}", min_chars: 1}
output: {kind: pair, name: "v-${n}"}
"""


def test_recipe_variables_are_substituted_and_paths_resolved(tmp_path, monkeypatch):
    path = _vars_recipe(tmp_path, VARS_RECIPE)
    r = load_recipe(str(path))
    assert r.sources[0].path == str(tmp_path / "sub" / "data" / "a.jsonl")  # relative to the recipe file
    assert r.output.name == "v-5" and r.steps[0].name == "len${n}"  # $$ escapes: a literal ${n}
    monkeypatch.chdir(tmp_path)
    r = load_recipe(str(path), ["vars.root=elsewhere"])  # --set values are relative to the working directory
    assert r.sources[0].path == str(tmp_path / "elsewhere" / "a.jsonl")
    assert r.sources[0].image_root == str(tmp_path / "elsewhere" / "img")
    r = load_recipe(str(path), ["vars.root=/abs"])
    assert r.sources[0].path == "/abs/a.jsonl"


def test_unknown_recipe_variable_is_a_clear_error(tmp_path):
    path = _vars_recipe(tmp_path, VARS_RECIPE.replace("${root}/a.jsonl", "${rot}/a.jsonl"))
    with pytest.raises(RecipeError, match=r"sources\.0\.path: unknown variable \$\{rot\}; did you mean \$\{root\}\?"):
        load_recipe(str(path))


# ---- hostile recipes: bounded loading, names that become file names, paths that are never empty -----------
def test_aliases_are_counted_as_copies_and_a_bomb_is_refused_before_anything_is_built():
    shared = "steps: &s [{step: image_decode}]\nother: *s\n"
    assert load_yaml(shared) == {"steps": [{"step": "image_decode"}], "other": [{"step": "image_decode"}]}
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
    )
    with pytest.raises(YamlLimitError, match=r"line 6, column 5: expands to more than 1,000,000 values"):
        load_yaml(bomb)  # a5 expands to 1,111,111 nodes: refused there, long before a9's 10^9 leaves


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, *x]\n", "an alias to a node that holds it"),
        ("a: &x {b: *x}\n", "an alias to a node that holds it"),
        ("a: " + "[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ("&r [&s [*s]]", "an alias to a node that holds it"),
    ],
)
def test_cycles_and_deep_nesting_are_refused(text, message):
    with pytest.raises(YamlLimitError, match=message):
        load_yaml(text)


def test_yaml_1_2_booleans_survive_the_fast_loader():
    assert load_yaml("a: no\nb: yes\nc: true\nd: off\ne: False\n") == {
        "a": "no", "b": "yes", "c": True, "d": "off", "e": False
    }  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p.write_bytes(b"name: \xc3\x28\n"),
            r"cannot read the recipe \(not UTF-8 text: byte 0xc3 at offset 6\)",
        ),
        (lambda p: p.write_bytes(b"#" * ((4 << 20) + 1)), r"cannot read the recipe \(larger than 4 MiB\)"),
        (lambda p: p.mkdir(), r"cannot read the recipe \(a directory\)"),
        (lambda p: os.mkfifo(p), r"cannot read the recipe \(not a regular file\)"),
    ],
)
def test_a_recipe_file_that_cannot_be_read_is_a_recipe_error(tmp_path, make, message):
    path = tmp_path / "r.yaml"
    make(path)
    with pytest.raises(RecipeError, match=message):
        load_recipe(str(path))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"name": "x" * 101}, "name: String should have at most 100 characters"),
        ({"output": {"kind": "pair", "name": "a/b"}}, "output.name: String should match pattern"),
        ({"sources": [{**BASE["sources"][0], "name": ".."}]}, "sources.0.name: String should match pattern"),
        ({"steps": [{"step": "image_decode", "name": "a/b"}]}, "steps.0.name: a name is part of file names"),
        ({"steps": [{"step": "image_decode", "name": "."}]}, "steps.0.name: a name is part of file names"),
        ({"sources": [{**BASE["sources"][0], "path": " "}]}, "sources.0.path: an empty path"),
        ({"tokenizer": {"type": "tokenizer_json", "path": ""}}, "tokenizer.path: an empty path"),
        ({"sources": [{**BASE["sources"][0], "name": f"s{i}"} for i in range(1001)]}, "1,001 sources; a build takes"),
    ],
)
def test_names_and_paths_that_would_break_files_are_refused(change, expected):
    assert expected in _err(_with(**change))


def test_an_empty_set_path_is_refused_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    for override in ("sources.caps.path=", "sources.caps.path=' '"):
        with pytest.raises(RecipeError, match=r"sources\.0\.path: an empty path"):
            load_recipe(str(path), [override])
