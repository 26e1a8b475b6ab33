"""Relocatable builds: the same inputs in another folder make the same build, byte for byte, and a build whose
inputs moved resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

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


def test_laion_and_obelics_plans_over_copied_inputs_are_the_same(tmp_path):
    """Their caches (selections, URL counts, downloads) are keyed by content and recorded as cache paths: the
    copy finds the first one's cache (no second download) and the recorded plan is the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.build.plan import plan_build
    from tests.integration.test_obelics_build import paragraph, row
    from tests.laion_data import write_metadata

    base = "http://127.0.0.1:9"
    first = tmp_path / "first"
    write_metadata(first / "laion", base, 40)
    rows = [row([("text", paragraph(i)), ("image", f"{base}/{i % 3}.jpg")]) for i in range(6)]
    (first / "web").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), first / "web" / "train-00000-of-00001.parquet", row_group_size=2)
    shutil.copytree(first, tmp_path / "elsewhere" / "second")

    def plans(root: Path) -> list:
        laion = {"name": "laion", "reader": "laion", "path": str(root / "laion"), "sizes": [10, 20]}
        laion["download"] = {"samples_per_shard": 10}
        web = {"name": "web", "reader": "obelics", "path": str(root / "web"), "partition_size": 2}
        return [
            plan_build(validate_recipe({"name": "r", "sources": [src], "output": {"kind": kind}}), None)
            for src, kind in ((laion, "pair"), (web, "interleaved"))
        ]

    for a, b in zip(plans(first), plans(tmp_path / "elsewhere" / "second"), strict=True):
        assert a.recipe_sha256 == b.recipe_sha256
        assert a.doc == b.doc
        recorded = json.dumps(a.doc)
        assert str(tmp_path) not in recorded and "$cache/" in recorded
