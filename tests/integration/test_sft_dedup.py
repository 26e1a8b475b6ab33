"""Near-duplicate removal (perceptual image hashes, MinHash-LSH texts) and benchmark decontamination in
real builds: every planted case is found, with its reason, and nothing else is dropped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.report.audit import audit
from shards import read_manifest, verify_dataset
from tests.builds import CLI, write_recipe
from tests.sft_data import make_benchmark_inputs, make_dedup_inputs


def _source(name: str, path: Path) -> dict:
    return {
        "name": name,
        "reader": "jsonl",
        "record": "sft",
        "path": str(path),
        "image_root": str(path.parent / name),
        "fields": {"key": "id"},
        "partition_size": 16,
    }


def _dropped_keys(out: Path) -> dict[str, str]:
    """key -> reason of every rejected sample (from the rejects shards' sidecars)."""
    found = {}
    for shard in read_manifest(out).rejects:
        table = pq.read_table(out / shard.sidecar, columns=["sample_key", "reason"]).to_pydict()
        found.update(zip(table["sample_key"], table["reason"], strict=True))
    return found


@pytest.fixture(scope="module")
def dedup_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    paths, planted = make_dedup_inputs(root)
    recipe = validate_recipe(
        {
            "name": "dedup",
            "sources": [_source(n, p) for n, p in paths.items()],
            "steps": [
                {"step": "near_dup_images", "hash": "phash", "max_distance": 4},
                {"step": "near_dup_text", "threshold": 0.7},
            ],
            "output": {"kind": "sft", "rejects": True, "max_samples_per_shard": 20},
        }
    )
    return build(recipe, root / "out", workers=2, progress=False), planted


def test_every_planted_duplicate_is_found_and_nothing_else(dedup_build):
    result, planted = dedup_build
    acc = result.manifest.accounting
    dropped = _dropped_keys(result.out)
    assert dropped == planted.expected
    # accounting is exact per source and agrees with the rejects
    for source, c in acc["sources"].items():
        assert c["input"] == planted.counts[source] == c["output"] + sum(c["dropped"].values())
    assert sum(sum(c["dropped"].values()) for c in acc["sources"].values()) == len(planted.expected)
    assert verify_dataset(result.out).ok


def test_duplicates_reported_per_source_pair(dedup_build):
    result, _ = dedup_build
    dup = result.manifest.duplicates
    # alpha's own copies (5 images, 1 text) duplicate alpha; beta's copies duplicate alpha too
    assert dup["near_dup_images"] == {"alpha": {"alpha": 5}, "beta": {"alpha": 5}}
    assert dup["near_dup_text"] == {"alpha": {"alpha": 1}, "beta": {"alpha": 1}}
    report = audit(result.out)
    assert report["duplicates"] == dup
    shown = subprocess.run([*CLI, "audit", str(result.out)], capture_output=True, text=True)
    assert shown.returncode == 0 and "duplicates per source pair" in shown.stdout


def test_sidecars_carry_perceptual_hashes(dedup_build):
    result, _ = dedup_build
    table = pq.read_table(result.out / result.manifest.shards[0].sidecar)
    hashes = table.column("image_phash").to_pylist()
    assert all(h is not None and len(h) == 1 for h in hashes)
    assert table.column("image_dhash").null_count == table.num_rows  # not asked for


def test_scope_source_keeps_cross_source_copies(tmp_path):
    paths, _planted = make_dedup_inputs(tmp_path / "in", n=12)
    recipe = validate_recipe(
        {
            "name": "scoped",
            "sources": [_source(n, p) for n, p in paths.items()],
            "steps": [{"step": "near_dup_images", "scope": "source"}],
            "output": {"kind": "sft"},
        }
    )
    result = build(recipe, tmp_path / "out", progress=False)
    dup = result.manifest.duplicates["near_dup_images"]
    assert dup == {"alpha": {"alpha": 5}}  # beta's copies of alpha images are kept: another source


@pytest.fixture(scope="module")
def decontaminated(tmp_path_factory):
    root = tmp_path_factory.mktemp("decontam")
    train, benches, planted = make_benchmark_inputs(root)
    recipe = {
        "name": "decontam",
        "sources": [_source("train", train["train"])],
        "steps": [
            {
                "step": "decontaminate",
                "benchmarks": [
                    {
                        "name": "mathvista",
                        "images": str(benches["mathvista"] / "images"),
                        "questions": str(benches["mathvista"] / "questions.jsonl"),
                    },
                    {"name": "chartbench", "questions": str(benches["chartbench"] / "questions.jsonl")},
                ],
            }
        ],
        "output": {"kind": "sft", "rejects": True},
    }
    return root, recipe, build(validate_recipe(recipe), root / "out", workers=2, progress=False), planted


def test_every_planted_contamination_is_found_and_nothing_else(decontaminated):
    _, _, result, planted = decontaminated
    assert _dropped_keys(result.out) == planted.expected
    c = result.manifest.accounting["sources"]["train"]
    assert c["input"] == planted.counts["train"] == c["output"] + sum(c["dropped"].values())


def test_contamination_counts_per_source_and_benchmark(decontaminated):
    _, _, result, _ = decontaminated
    report = audit(result.out)
    assert report["contamination"] == {
        "chartbench": {"train": {"question": 1}},
        "mathvista": {"train": {"image": 3, "image_and_question": 1, "question": 2}},
    }
    shown = subprocess.run([*CLI, "audit", str(result.out), "-f", "markdown"], capture_output=True, text=True)
    assert "benchmark contamination removed" in shown.stdout


def test_benchmark_as_our_shards(decontaminated, tmp_path):
    """A benchmark given as a dataset built by this toolkit finds the same image contamination."""
    root, recipe, _, planted = decontaminated
    bench_recipe = {
        "name": "bench",
        "sources": [
            {
                "name": "mathvista",
                "reader": "jsonl",
                "record": "sft",
                "path": str(root / "mathvista" / "questions.jsonl"),
                "image_root": str(root / "mathvista" / "images"),
                "fields": {"images": "image", "turns": "turns"},
            }
        ],
        "output": {"kind": "sft"},
    }
    rows = (root / "mathvista" / "questions.jsonl").read_text().splitlines()
    import json

    converted = tmp_path / "mv.jsonl"
    converted.write_text(
        "".join(
            json.dumps(
                {"image": json.loads(r)["image"], "turns": [{"user": json.loads(r)["question"], "assistant": "x"}]}
            )
            + "\n"
            for r in rows
        )
    )
    bench_recipe["sources"][0]["path"] = str(converted)
    bench = build(validate_recipe(bench_recipe), tmp_path / "bench", progress=False).out
    shard_recipe = dict(recipe)
    shard_recipe["steps"] = [{"step": "decontaminate", "benchmarks": [{"name": "mathvista", "shards": str(bench)}]}]
    result = build(validate_recipe(shard_recipe), tmp_path / "out", progress=False)
    want = {k: v for k, v in planted.expected.items() if "mathvista" in v}
    assert _dropped_keys(result.out) == want


def test_missing_benchmark_is_a_clear_error(tmp_path):
    recipe = {
        "name": "x",
        "sources": [{"name": "s", "reader": "jsonl", "record": "sft", "path": str(tmp_path / "in.jsonl")}],
        "steps": [{"step": "decontaminate", "benchmarks": [{"name": "mmmu", "images": str(tmp_path / "nope")}]}],
        "output": {"kind": "sft"},
    }
    (tmp_path / "in.jsonl").write_text('{"turns": [{"user": "q", "assistant": "a"}]}\n')
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run = subprocess.run([*CLI, "build", str(path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "steps.0.benchmarks.mmmu.images" in run.stderr and "is not a directory" in run.stderr


def test_llava_json_contamination_is_found(decontaminated, tmp_path):
    """The same planted contamination, read from LLaVA JSON with an image folder."""
    import json

    root, recipe, _, planted = decontaminated
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    llava = [
        {
            "id": r["id"],
            "image": r["images"][0],
            "conversations": [
                {"from": "human", "value": "<image>\n" + r["turns"][0]["user"]},
                {"from": "gpt", "value": r["turns"][0]["assistant"]},
            ],
        }
        for r in rows
    ]
    (tmp_path / "train.json").write_text(json.dumps(llava, indent=1))
    source = {
        "name": "train",
        "reader": "llava",
        "path": str(tmp_path / "train.json"),
        "image_root": str(root / "train"),
    }
    result = build(
        validate_recipe({**recipe, "sources": [source], "output": {"kind": "sft", "rejects": True}}),
        tmp_path / "out",
        progress=False,
    )
    assert _dropped_keys(result.out) == {f"train-{k}": v for k, v in planted.expected.items()}


def test_near_duplicate_removal_does_not_depend_on_the_workers(tmp_path):
    """Guarantee 3: the same drops and byte-identical shards with 1 or 2 workers."""
    from tests.builds import tree_digest

    paths, _ = make_dedup_inputs(tmp_path / "in", n=12)
    recipe = {
        "name": "dedup",
        "sources": [_source(n, p) for n, p in paths.items()],
        "steps": [{"step": "near_dup_images"}, {"step": "near_dup_text", "threshold": 0.7}],
        "output": {"kind": "sft", "max_samples_per_shard": 10},
    }
    one = build(validate_recipe(recipe), tmp_path / "one", workers=1, progress=False).out
    two = build(validate_recipe(recipe), tmp_path / "two", workers=2, progress=False).out
    assert tree_digest(one) == tree_digest(two)
