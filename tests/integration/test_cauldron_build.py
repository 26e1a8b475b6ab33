"""Cauldron / Docmatix builds end to end: HF-layout parquet -> sft shards, exact accounting per source."""

from __future__ import annotations

import json
import time

from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.sources.cauldron_catalog import cauldron_configs
from shards import iter_dataset, read_manifest, verify_dataset
from tests.cauldron_data import kept_rows, make_cauldron


def recipe(root, sources: list[tuple[str, str]], steps: list[dict] | None = None, **source_kw) -> dict:
    return {
        "kind": "build",
        "name": "cauldron",
        "sources": [
            {"name": name, "reader": "cauldron", "path": str(root), "config": config, **source_kw}
            for name, config in sources
        ],
        "steps": steps or [],
        "output": {"kind": "sft", "max_samples_per_shard": 8, "rejects": True},
    }


def test_cauldron_build_accounting_and_samples(tmp_path):
    data = make_cauldron(
        tmp_path / "cauldron",
        {"ai2d": 26, "chartqa": 18, "vqav2": 12, "images": 10},
        files_per_config=2,
        row_group_size=4,
        bad={
            "ai2d": ["null_texts", "null_user", "missing_image_file", "corrupt_image"],
            "vqav2": ["null_image", "empty_texts"],
        },
        path_images={"vqav2": 3},
        duplicates={"chartqa": 2},
    )
    sources = [("ai2d", "ai2d"), ("chartqa", "chartqa"), ("vqav2", "vqav2"), ("docmatix", "images")]
    r = validate_recipe(recipe(data["root"], sources, [{"step": "exact_image_dedup"}], partition_size=8))
    result = build(r, tmp_path / "out", workers=2, progress=False)
    m = read_manifest(result.out)
    assert verify_dataset(result.out).ok

    built: dict[str, list] = {}
    for rec in iter_dataset(result.out):
        built.setdefault(rec.source, []).append(rec)
    for name, config in sources:
        c = data["configs"][config]
        dups = sum(1 for e in kept_rows(data, config) if e["duplicate_of"] is not None)
        dropped = {**c["drops"]["read"], **c["drops"]["probe"], **({"duplicate_image": dups} if dups else {})}
        assert m.accounting["sources"][name] == {"input": c["rows"], "output": c["kept"] - dups, "dropped": dropped}
        expected = [e for e in kept_rows(data, config) if e["duplicate_of"] is None]
        records = built[name]
        assert [rec.key for rec in records] == [e["key"] for e in expected]
        for rec, e in zip(records, expected, strict=True):
            assert rec.images == e["images"]
            assert [t.model_dump() for t in rec.turns] == e["turns"]
            assert rec.meta == e["meta"]
    assert m.accounting["sources"]["ai2d"]["dropped"] == {
        "image_unreadable": 1,
        "invalid_record:turns": 2,
        "missing_image_file": 1,
    }
    steps = {s["step"]: s["sources"] for s in m.accounting["steps"]}
    assert steps["probe"]["ai2d"]["dropped"] == {"image_unreadable": 1}  # the undecodable image: found by the probe
    assert steps["exact_image_dedup"]["chartqa"]["dropped"] == {"duplicate_image": 2}
    for step in m.accounting["steps"]:
        for source, counts in step["sources"].items():
            assert counts["input"] == counts["output"] + sum(counts["dropped"].values()), (step["step"], source)
    assert m.totals["samples"] == sum(len(v) for v in built.values())
    assert {len(rec.images) for rec in built["docmatix"]} == {1, 2, 3, 4}

    # Every partition is whole row groups of one file; each partition's accounting adds up to its rows.
    stats = json.loads((result.out / "stats.json").read_text())
    assert sum(p["rows"] for p in stats["partitions"]) == sum(data["configs"][c]["rows"] for _, c in sources)
    for p in stats["partitions"]:
        read = next(s for s in p["accounting"]["steps"] if s["step"] == "read")["sources"][p["source"]]
        assert read["input"] == p["rows"] and p["spec"]["mode"] == "parquet"


def test_all_50_configs_build_in_one_recipe(tmp_path):
    configs = sorted(cauldron_configs())
    assert len(configs) == 50
    sizes = {c: 2 + i % 2 for i, c in enumerate(configs)}
    data = make_cauldron(tmp_path / "cauldron", sizes, bad={"websight": ["null_texts"]})
    started = time.perf_counter()
    r = validate_recipe(recipe(data["root"], [(c, c) for c in configs]))
    result = build(r, tmp_path / "out", workers=2, progress=False)
    elapsed = time.perf_counter() - started
    m = read_manifest(result.out)
    for c in configs:
        want = {"input": sizes[c], "output": sizes[c], "dropped": {}}
        if c == "websight":
            want = {"input": sizes[c], "output": sizes[c] - 1, "dropped": {"invalid_record:turns": 1}}
        assert m.accounting["sources"][c] == want, c
    records = list(iter_dataset(result.out))
    assert len(records) == m.totals["samples"] == sum(sizes.values()) - 1
    assert {rec.meta["config"] for rec in records} == set(configs)
    assert all(rec.key.startswith(f"{rec.meta['config']}-") for rec in records)
    assert elapsed < 30, f"50 tiny configs took {elapsed:.1f} s"


def test_limit_builds_a_prefix(tmp_path):
    limit = 5
    data = make_cauldron(tmp_path / "cauldron", {"docvqa": 12}, row_group_size=3)
    r = validate_recipe(recipe(data["root"], [("docvqa", "docvqa")], partition_size=6))
    full = [rec.key for rec in iter_dataset(build(r, tmp_path / "full", progress=False).out)]
    part = build(r, tmp_path / "part", limit=limit, progress=False)
    keys = [rec.key for rec in iter_dataset(part.out)]
    assert keys == full[:limit]
    assert read_manifest(part.out).accounting["sources"]["docvqa"]["input"] == limit
