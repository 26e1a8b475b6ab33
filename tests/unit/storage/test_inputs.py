"""Recipe inputs named by URL, without a store: glob matching as local globs match, URL roots and relocation, the
readers that refuse URLs, recipe paths that stay URLs (the store itself: tests/integration/test_s3_inputs.py)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from curation.build.relocate import Relocator, input_root, path_folder
from curation.errors import CurationError, RecipeError
from curation.recipe import load_recipe, validate_recipe
from curation.sources import make_reader
from curation.sources.base import Partition
from curation.storage import inputs
from curation.storage.inputs import _glob_match, _glob_parts, check_inputs, common_url, join_url, parent_url
from curation.storage.store import ObjectInfo


def _tree(root: Path) -> list[str]:
    names = [
        "a.jsonl",
        ".hidden.jsonl",
        "sub/b.jsonl",
        "sub/c.parquet",
        "sub/deeper/d.jsonl",
        ".cache/e.jsonl",
        "sub/.h/f.jsonl",
        "x-y/g.jsonl",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}\n")
    return names


@pytest.mark.parametrize(
    "pattern", ["*.jsonl", "**/*.jsonl", "sub/*", "sub/**/*.jsonl", "*/*.jsonl", "**", "s?b/[bc].*", ".*/*.jsonl"]
)
def test_a_glob_over_keys_matches_what_a_local_glob_matches(tmp_path, pattern):
    keys = _tree(tmp_path)
    local = {
        os.path.relpath(f, tmp_path) for f in glob.glob(str(tmp_path / pattern), recursive=True) if Path(f).is_file()
    }
    fixed, rest = _glob_parts(pattern)  # as list_url does: the keys under the fixed part, matched part by part
    under = [k for k in keys if not fixed or k.startswith(f"{fixed}/")]
    assert {k for k in under if _glob_match(k[len(fixed) + 1 :].split("/") if fixed else k.split("/"), rest)} == local


def test_url_roots_parents_and_joins():
    assert common_url(["s3://bkt/in/a", "s3://bkt/in/images", "s3://bkt/in"]) == "s3://bkt/in"
    assert common_url(["s3://bkt/in/x", "s3://bkt/inputs/y"]) == "s3://bkt"  # part by part, never inside a name
    assert common_url(["s3://bk1/in", "s3://bk2/in"]) is None  # different buckets: no root
    assert parent_url("s3://bkt/in/a.jsonl") == "s3://bkt/in"
    assert parent_url("s3://bkt/a.jsonl") == "s3://bkt"
    assert parent_url("s3://bkt") == "s3://bkt"
    assert join_url("s3://bkt/in/images", "x/./y.png") == "s3://bkt/in/images/x/y.png"
    assert join_url("s3://bkt/in/images", "../other/y.png") == "s3://bkt/in/other/y.png"
    assert join_url("s3://bkt/in", "../../../etc/passwd") is None  # never out of the bucket
    assert join_url("s3://bkt/in", "x" * 2000) is None  # no key is that long: a missing image, not a request
    with pytest.raises(ValueError, match="null byte"):  # as os.stat says of a local name: invalid_image_field
        join_url("s3://bkt/in", "a\x00.png")
    assert _glob_parts("in/**/*.parquet") == ("in", ["**", "*.parquet"])


def test_a_url_root_relocates_origins_details_and_recipes():
    where = Relocator("s3://bkt/in")
    assert where.path("s3://bkt/in/captions.jsonl:12") == "captions.jsonl:12"
    assert where.path("s3://bkt/inputs/x") == "s3://bkt/inputs/x"  # a sibling sharing the prefix
    detail = "[Errno 2] No such file or directory: 's3://bkt/in/images/missing_00007.jpg'"
    assert where.text(detail) == "[Errno 2] No such file or directory: 'images/missing_00007.jpg'"


def _url_recipe(**paths: str):
    return validate_recipe(
        {
            "name": "r",
            "sources": [
                {"name": "a", "reader": "jsonl", "path": paths["a"], "image_root": paths["images"]},
                {"name": "b", "reader": "parquet", "path": paths["b"]},
            ],
            "output": {"kind": "pair"},
        }
    )


def test_the_input_root_of_urls_is_their_deepest_common_prefix(monkeypatch, tmp_path):
    objects = {"s3://bkt/in/captions.jsonl", "s3://bkt/in/conv/x.parquet"}
    monkeypatch.setattr(inputs, "object_info", lambda url: ObjectInfo(1, "e") if url in objects else None)
    assert path_folder("s3://bkt/in/captions.jsonl") == "s3://bkt/in"  # an object: its parent
    assert path_folder("s3://bkt/in/images") == "s3://bkt/in/images"  # a prefix: itself
    assert path_folder("s3://bkt/in/conv/*.parquet") == "s3://bkt/in/conv"
    recipe = _url_recipe(a="s3://bkt/in/captions.jsonl", images="s3://bkt/in/images", b="s3://bkt/in/conv/*.parquet")
    assert input_root(recipe) == "s3://bkt/in"
    elsewhere = _url_recipe(a="s3://bkt/in/captions.jsonl", images="s3://bkt/in/images", b="s3://ckt/conv/x.parquet")
    assert input_root(elsewhere) is None  # two buckets: URLs are recorded whole
    (tmp_path / "x.jsonl").write_text("{}\n")
    mixed = _url_recipe(a=str(tmp_path / "x.jsonl"), images=str(tmp_path), b="s3://bkt/in/conv/x.parquet")
    assert input_root(mixed) == str(tmp_path)  # the local root; the URL stays whole
    declared = validate_recipe({**recipe.model_dump(mode="json"), "inputs_root": "s3://bkt/"})
    assert input_root(declared) == "s3://bkt"


def test_a_reader_that_reads_local_paths_only_refuses_a_url_on_one_line(monkeypatch):
    """Every reader of the toolkit streams from a bucket; a reader that does not declare it (``reads_urls``) is
    refused a URL on one line, before anything is read or written."""
    from curation.sources.obelics.reader import ObelicsReader

    monkeypatch.setattr(ObelicsReader, "reads_urls", False)
    source = {"name": "s", "reader": "obelics", "path": "s3://bkt/o/*.parquet"}
    recipe = validate_recipe({"name": "r", "sources": [source], "output": {"kind": "interleaved"}})
    with pytest.raises(RecipeError) as err:
        make_reader(recipe.sources[0])
    message = str(err.value)
    assert message.startswith("sources.s.path: s3://") and "reads local paths only" in message
    assert "\n" not in message
    with pytest.raises(RecipeError, match="reads local paths only"):
        check_inputs(recipe)  # before anything is read or written
    cauldron = {"name": "c", "reader": "cauldron", "path": "/data/cauldron", "image_root": "s3://bkt/img"}
    make_reader(validate_recipe({"name": "r", "sources": [cauldron], "output": {"kind": "sft"}}).sources[0])


def test_an_img2dataset_download_in_a_bucket_is_read_in_place():
    source = {"name": "web", "reader": "img2dataset", "path": "s3://bkt/downloads/"}
    recipe = validate_recipe({"name": "r", "sources": [source], "output": {"kind": "pair"}})
    reader = make_reader(recipe.sources[0])  # no request: the reader lists the prefix when it plans
    assert reader.partition_origin(Partition("web", 0, 1, {"file": "00000.parquet"})) == (
        "s3://bkt/downloads/00000.parquet"  # joined as a string, never through a Path (which loses a "/")
    )


def test_a_url_where_only_local_paths_work_is_a_recipe_error():
    source = {"name": "a", "reader": "laion", "path": "/data/meta", "cache_dir": "s3://bkt/cache"}
    recipe = validate_recipe({"name": "r", "sources": [source], "output": {"kind": "pair"}})
    with pytest.raises(RecipeError, match=r"^sources.a.cache_dir: s3://bkt/cache: a cache is a local folder"):
        check_inputs(recipe)
    source = {"name": "a", "reader": "jsonl", "path": "gs://bkt/a.jsonl"}
    bad_scheme = validate_recipe({"name": "r", "sources": [source], "output": {"kind": "pair"}})
    with pytest.raises(CurationError, match=r"sources.a.path gs://bkt/a.jsonl: gs:// is not supported"):
        check_inputs(bad_scheme)
    tokenizer = {"type": "tokenizer_json", "path": "gs://bkt/tokenizer.json"}
    source = {"name": "a", "reader": "jsonl", "path": "/data/a.jsonl"}
    other = validate_recipe({"name": "r", "sources": [source], "tokenizer": tokenizer, "output": {"kind": "pair"}})
    with pytest.raises(CurationError, match=r"gs:// is not supported"):
        check_inputs(other)


def test_set_keeps_a_url_and_never_makes_it_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "name: r\nsources:\n  - {name: a, reader: jsonl, path: a.jsonl, image_root: img}\noutput: {kind: pair}\n"
    )
    recipe = load_recipe(
        str(recipe_file), ["sources.a.path=s3://bkt/in/a.jsonl", "sources.a.image_root=s3://bkt/in/images"]
    )
    assert recipe.sources[0].path == "s3://bkt/in/a.jsonl"
    assert recipe.sources[0].image_root == "s3://bkt/in/images"
    assert not (tmp_path / "s3:").exists()
