"""Input roots, relocated paths and the cached content identity of input files."""

from __future__ import annotations

import os

import pytest

from curation import file_digest
from curation.build.relocate import Relocator, input_identity, input_root
from curation.recipe import validate_recipe


def test_paths_under_the_root_become_relative_and_nothing_else_changes():
    where = Relocator("/data/in")
    assert where.path("/data/in") == "."
    assert where.path("/data/in/a/b.jsonl") == "a/b.jsonl"
    assert where.path("/data/in/a.jsonl:12") == "a.jsonl:12"
    assert where.path("/data/inputs/a.jsonl") == "/data/inputs/a.jsonl"  # a sibling sharing the prefix
    assert where.path("s3://bucket/data/in/a") == "s3://bucket/data/in/a"
    assert where.text("No such file: '/data/in/images/x.jpg'") == "No such file: 'images/x.jpg'"
    assert where.doc({"k": ["/data/in/x", 3, None], "/data/in/key": "v"}) == {"k": ["x", 3, None], "/data/in/key": "v"}
    assert where.text("seen at /mnt/data/in/x") == "seen at /mnt/data/in/x"  # only at a path boundary
    assert Relocator("/").path("/data/x") == "/data/x"  # a root of / would make every path look relative
    assert Relocator(None).doc({"a": "/data/in/x"}) == {"a": "/data/in/x"}


def test_cache_paths_are_recorded_as_cache_paths():
    where = Relocator("/data/in", ("/home/u/.cache/vlm-curation",))
    assert where.path("/home/u/.cache/vlm-curation/laion-select/ab12") == "$cache/laion-select/ab12"
    assert where.doc({"spec": {"download_dir": "/home/u/.cache/vlm-curation/d/1", "file": "/data/in/m.parquet"}}) == {
        "spec": {"download_dir": "$cache/d/1", "file": "m.parquet"}
    }
    inside = Relocator("/data", ("/data/cache",))  # a cache inside the input root is still a cache
    assert inside.path("/data/cache/x") == "$cache/x"


def _recipe(tmp_path, **extra):
    (tmp_path / "laion").mkdir(parents=True, exist_ok=True)
    (tmp_path / "laion" / "part-0.parquet").write_bytes(b"x")
    (tmp_path / "pairs").mkdir(exist_ok=True)
    (tmp_path / "pairs" / "a.jsonl").write_text("{}\n")
    recipe = {
        "name": "r",
        "sources": [
            {"name": "a", "reader": "jsonl", "path": str(tmp_path / "pairs" / "a.jsonl"), "image_root": str(tmp_path)},
            {"name": "b", "reader": "parquet", "path": str(tmp_path / "laion" / "*.parquet")},
            {"name": "c", "reader": "cauldron", "path": "HuggingFaceM4/the_cauldron"},  # a hub id: not a path
        ],
        "output": {"kind": "pair"},
        **extra,
    }
    return validate_recipe(recipe)


def test_the_default_root_is_the_deepest_folder_holding_every_source(tmp_path):
    assert input_root(_recipe(tmp_path)) == str(tmp_path)
    declared = _recipe(tmp_path, inputs_root=str(tmp_path.parent))
    assert input_root(declared) == str(tmp_path.parent)


def test_input_identity_is_by_content_and_relative_names(tmp_path):
    recipe = _recipe(tmp_path)
    identity = input_identity(recipe, Relocator(str(tmp_path)))
    assert sorted(identity) == ["laion/part-0.parquet", "pairs/a.jsonl"]
    assert identity["pairs/a.jsonl"][0] == 3
    moved = tmp_path.parent / "moved"
    os.rename(tmp_path, moved)
    assert input_identity(_recipe(moved), Relocator(str(moved))) == identity


def test_a_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    calls = []
    real = file_digest._hash
    monkeypatch.setattr(file_digest, "_hash", lambda p: calls.append(p) or real(p))
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    first = file_digest.file_sha256(f)
    assert file_digest.file_sha256(f) == first
    assert len(calls) == 1
    f.write_bytes(b"abd")
    assert file_digest.file_sha256(f) != first
    assert len(calls) == 2


def test_large_files_are_found_again_by_a_new_process(tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * file_digest.CACHED_FROM_BYTES)
    first = file_digest.file_sha256(f)
    monkeypatch.setattr(file_digest, "_memo", {})  # as a new process
    monkeypatch.setattr(file_digest, "_hash", lambda p: pytest.fail("hashed again"))
    assert file_digest.file_identities([f, f]) == [(f.stat().st_size, first)] * 2


def test_a_cache_that_cannot_be_written_still_hashes(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("VLM_CURATION_CACHE", str(blocker / "cache"))
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert file_digest.file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("name", ["a", "b"])
def test_hidden_files_in_a_source_folder_are_not_inputs(tmp_path, name):
    (tmp_path / "d" / ".cache").mkdir(parents=True)
    (tmp_path / "d" / ".cache" / "lock").write_text(name)
    (tmp_path / "d" / "data.jsonl").write_text("{}\n")
    recipe = validate_recipe(
        {
            "name": "r",
            "sources": [{"name": "s", "reader": "jsonl", "path": str(tmp_path / "d")}],
            "output": {"kind": "pair"},
        }
    )
    assert list(input_identity(recipe, Relocator(str(tmp_path / "d")))) == ["data.jsonl"]
