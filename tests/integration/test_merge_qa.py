"""merge_qa: QA pairs on the same images become one conversation (the Cauldron convention)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from curation.build.runner import build
from curation.recipe import validate_recipe
from shards import read_manifest, verify_dataset
from shards.reader import iter_dataset
from tests.sft_data import drawing, encode


def _vqa_rows(root: Path) -> Path:
    """VQAv2-like rows: one QA per row, 3 questions on each of 6 images, rows interleaved across images,
    partitions of 5 rows (so a conversation's rows live in different partitions), plus a text-only row."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        (root / f"img{i}.png").write_bytes(encode(drawing(i)))
    rows = [
        {
            "id": f"q{q}-img{i}",
            "images": [f"img{i}.png"],
            "turns": [{"user": f"question {q} on {i}?", "assistant": f"a{q}{i}"}],
        }
        for q in range(3)
        for i in range(6)
    ]
    rows.append({"id": "text-only", "turns": [{"user": "hello?", "assistant": "hi"}]})
    path = root / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(path: Path, **step) -> dict:
    return {
        "name": "merged",
        "sources": [
            {
                "name": "vqav2",
                "reader": "jsonl",
                "record": "sft",
                "path": str(path),
                "image_root": str(path.parent),
                "fields": {"key": "id"},
                "partition_size": 5,
            }
        ],
        "steps": [{"step": "merge_qa", **step}],
        "output": {"kind": "sft", "max_samples_per_shard": 4},
    }


def test_same_image_questions_merge_into_one_conversation(tmp_path):
    path = _vqa_rows(tmp_path / "in")
    result = build(validate_recipe(_recipe(path)), tmp_path / "out", workers=2, progress=False)
    records = {r.key: r for r in iter_dataset(result.out)}
    assert set(records) == {f"q0-img{i}" for i in range(6)} | {"text-only"}
    for i in range(6):
        turns = records[f"q0-img{i}"].turns
        assert [t.user for t in turns] == [f"question {q} on {i}?" for q in range(3)]
        assert [t.assistant for t in turns] == [f"a{q}{i}" for q in range(3)]
    acc = result.manifest.accounting["sources"]["vqav2"]
    assert acc == {"input": 19, "output": 7, "dropped": {"merged_into_conversation": 12}}
    # sidecars and totals describe the grown conversations
    turns = sum(
        pq.read_table(result.out / s.sidecar, columns=["turns"]).column("turns").to_pylist().count(3)
        for s in result.manifest.shards
    )
    assert turns == 6
    assert result.manifest.totals["samples"] == 7
    assert verify_dataset(result.out).ok, verify_dataset(result.out).problems
    assert read_manifest(result.out).duplicates == {}


def test_max_turns_starts_a_new_conversation(tmp_path):
    path = _vqa_rows(tmp_path / "in")
    result = build(validate_recipe(_recipe(path, max_turns=2)), tmp_path / "out", progress=False)
    records = {r.key: r for r in iter_dataset(result.out)}
    assert len(records) == 13  # per image: a 2-turn conversation and a 1-turn one, plus the text-only row
    assert sorted(len(r.turns) for r in records.values()).count(2) == 6


def test_merge_is_deterministic_across_workers(tmp_path):
    from tests.builds import tree_digest

    path = _vqa_rows(tmp_path / "in")
    a = build(validate_recipe(_recipe(path)), tmp_path / "a", workers=1, progress=False).out
    b = build(validate_recipe(_recipe(path)), tmp_path / "b", workers=2, progress=False).out
    assert tree_digest(a) == tree_digest(b)


def test_killed_while_committing_merged_shards_resumes_byte_identical(tmp_path):
    """Guarantee 2 with merge_qa: killed while rewriting grown conversations, the rerun gives the same bytes."""
    import os
    import signal
    import subprocess

    import yaml

    from tests.builds import CLI, tree_digest

    path = _vqa_rows(tmp_path / "in")
    reference = build(validate_recipe(_recipe(path)), tmp_path / "ref", progress=False).out
    recipe = tmp_path / "merged.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(path)))
    out = tmp_path / "out"
    env = {**os.environ, "VLM_CURATION_CRASH_AT": "rewrite_tar_written:1"}
    killed = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    done = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == tree_digest(reference)
