"""Relocatable builds: the same inputs in another folder make the same build, byte for byte, and a build whose
inputs moved resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from tests.builds import CLI, demo_recipe, make_inputs, tree_digest, write_recipe


def test_two_demos_in_different_folders_are_identical(tmp_path):
    outs = []
    for place in ("first", "second/deeper"):
        cwd = tmp_path / place
        cwd.mkdir(parents=True)
        done = subprocess.run([*CLI, "demo", "--out", "demo-out"], cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(cwd / "demo-out" / "dataset")
    first, second = (tree_digest(out) for out in outs)
    assert any(name.startswith("rejects/") and name.endswith(".tar") for name in first)
    assert first == second
    assert str(tmp_path) not in (outs[0] / "dataset.json").read_text()
    assert str(tmp_path) not in (outs[0] / "stats.json").read_text()


def test_inputs_moved_mid_build_resume_to_byte_identical_output(tmp_path):
    make_inputs(tmp_path / "here" / "inputs", n_captions=120, n_conversations=30)
    shutil.copytree(tmp_path / "here" / "inputs", tmp_path / "reference-inputs")
    reference = tmp_path / "reference"
    build(validate_recipe(demo_recipe(tmp_path / "reference-inputs")), reference, progress=False)

    out = tmp_path / "ds"
    recipe = write_recipe(tmp_path / "here.yaml", demo_recipe(tmp_path / "here" / "inputs"))
    env = {**os.environ, "VLM_CURATION_CRASH_AT": "partition_staged:2"}
    killed = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    (tmp_path / "elsewhere" / "mount").mkdir(parents=True)
    (tmp_path / "here" / "inputs").rename(tmp_path / "elsewhere" / "mount" / "inputs")  # another mount point
    moved = write_recipe(tmp_path / "moved.yaml", demo_recipe(tmp_path / "elsewhere" / "mount" / "inputs"))
    done = subprocess.run([*CLI, "build", str(moved), "--out", str(out), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed" in done.stderr
    assert tree_digest(out) == tree_digest(reference)

    again = subprocess.run([*CLI, "build", str(moved), "--out", str(out), "-q"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already built from this recipe" in again.stderr


def test_records_paths_relative_to_the_input_root(tmp_path):
    make_inputs(tmp_path / "in", n_captions=30, n_conversations=6)
    out = tmp_path / "ds"
    build(validate_recipe(demo_recipe(tmp_path / "in")), out, progress=False)
    manifest = json.loads((out / "dataset.json").read_text())
    sources = {s["name"]: s for s in manifest["recipe"]["sources"]}
    assert sources["captions"]["path"] == "captions.jsonl"
    assert sources["captions"]["image_root"] == "images"
    plan = json.loads((out / "stats.json").read_text())["partitions"][0]
    assert plan["spec"]["file"] == "captions.jsonl"


def test_declared_inputs_root_is_what_paths_are_relative_to(tmp_path):
    make_inputs(tmp_path / "project" / "data", n_captions=30, n_conversations=6)
    recipe = demo_recipe(tmp_path / "project" / "data")
    recipe["inputs_root"] = str(tmp_path / "project")
    out = tmp_path / "ds"
    build(validate_recipe(recipe), out, progress=False)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["recipe"]["sources"][0]["path"] == "data/captions.jsonl"
    assert manifest["recipe"]["inputs_root"] == "."


def test_same_place_other_bytes_is_another_build(tmp_path):
    make_inputs(tmp_path / "in", n_captions=30, n_conversations=6)
    recipe = validate_recipe(demo_recipe(tmp_path / "in"))
    build(recipe, tmp_path / "ds", progress=False)
    captions = tmp_path / "in" / "captions.jsonl"
    captions.write_text(captions.read_text().replace("A picture", "A pictura", 1))  # same name, same size
    with pytest.raises(CurationError, match="inputs have changed"):
        build(recipe, tmp_path / "ds", progress=False)
