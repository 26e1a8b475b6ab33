"""The built-in finevision_filtered recipe, through the CLI as a user runs it, on FineVision-layout parquet made
here: every planted bad row, low-rated turn, contaminated image and near-duplicate is accounted for, and the
rating filters' reports add up in dataset.json and the run log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from curation.recipe import load_recipe
from shards import iter_dataset, read_manifest, verify_dataset
from tests.builds import CLI
from tests.finevision_data import AXES, IMAGE_SIZE, make_finevision, rating, row_uid, turn_filter_outcome
from tests.idefics3_data import SIZE as BENCHMARK_SIZE
from tests.idefics3_data import make_benchmarks
from tests.sft_data import VARIANTS, drawing

RECIPE_AXES = ("relevance", "formatting", "visual_dependency", "image_correspondence")  # the recipe's filter order
BAD = ["null_texts", "ratings_short", "rating_out_of_range", "null_rating", "min_mismatch", "corrupt_image"]


def _good(subset: str, n: int) -> list[int]:
    """Rows every turn of which is rated >= 3 on every axis (they pass the filters whole)."""
    return [i for i in range(n) if all(rating(subset, i, t, a) >= 3 for t in range(1 + i % 4) for a in AXES)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("finevision")
    recipe = load_recipe("finevision_filtered")
    subsets = {s.config_name(): s.name for s in recipe.sources}  # type: ignore[union-attr]
    sizes = {subset: 9 for subset in subsets} | {"docvqa": 14}
    order = list(subsets)
    benchmarks = make_benchmarks(root / "benchmarks")
    contaminated = ("CoSyn_400k_chart", _good("CoSyn_400k_chart", 9)[0])
    first, copy = _good("sharegpt4v(coco)", 9)[:2]
    original = drawing(row_uid(order.index("sharegpt4v(coco)"), first), IMAGE_SIZE)
    images = {
        contaminated: VARIANTS["reencoded"](drawing(benchmarks["mmmu"][0]["uid"], BENCHMARK_SIZE)),
        ("sharegpt4v(coco)", copy): VARIANTS["resized"](original),
    }
    data = make_finevision(root / "FineVision", sizes, bad={"docvqa": BAD}, images=images, files_per_subset=2)
    out = root / "out"
    run = subprocess.run(
        [*CLI, "build", "finevision_filtered", "--out", str(out), "-w", "2",
         "--set", f"vars.finevision={root / 'FineVision'}", "--set", f"vars.benchmarks={root / 'benchmarks'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return {"out": out, "data": data, "subsets": subsets, "stderr": run.stderr, "planted": (contaminated, copy)}


def test_every_row_is_accounted_for(built):
    out, data, subsets = built["out"], built["data"], built["subsets"]
    (contaminated, row), copy = built["planted"]
    m = read_manifest(out)
    assert m.recipe["name"] == "finevision_filtered" and verify_dataset(out).ok
    steps = {s["step"]: s["sources"] for s in m.accounting["steps"]}
    minimums = dict.fromkeys(RECIPE_AXES, 3)
    for subset, name in subsets.items():
        s, hand = data["subsets"][subset], turn_filter_outcome(data, subset, minimums)
        assert steps["read"][name]["dropped"] == s["drops"]["read"], name
        assert steps["probe"][name]["dropped"] == s["drops"]["probe"], name
        for axis in RECIPE_AXES:
            lost = sum(1 for a in hand["dropped"].values() if a == axis)
            assert steps[axis][name]["dropped"] == ({"no_turns_left": lost} if lost else {}), (name, axis)
        extra = {"cosyn_400k_chart": "decontaminate", "sharegpt4v_coco": "near_dup_images"}.get(name)
        output = len(hand["kept"]) - (extra is not None)
        assert m.accounting["sources"][name]["input"] == s["rows"]
        assert m.accounting["sources"][name]["output"] == output, name
    assert steps["decontaminate"]["cosyn_400k_chart"]["dropped"] == {"contaminated_image:mmmu": 1}
    assert steps["near_dup_images"]["sharegpt4v_coco"]["dropped"] == {"near_duplicate_image": 1}
    assert m.categories["cosyn_400k_chart"] == "chart_table" and m.categories["text_openhermes_2_5"] == "text_only"

    # What is kept: the turns and ratings left by the filters, every rating >= 3, the minimums in the sidecars.
    by_key = {e["key"]: (subset, e["index"]) for subset in subsets for e in data["subsets"][subset]["expected"]}
    records = list(iter_dataset(out))
    assert len(records) == m.totals["samples"]
    for rec in records:
        subset, index = by_key[rec.key]
        turns, ratings = turn_filter_outcome(data, subset, minimums)["kept"][index]
        assert [t.model_dump() for t in rec.turns] == turns and rec.meta["ratings"] == ratings
        assert all(min(v) >= 3 and rec.meta[f"{a}_min"] == min(v) for a, v in ratings.items())
    assert (contaminated, row) not in {by_key[r.key] for r in records}
    assert ("sharegpt4v(coco)", copy) not in {by_key[r.key] for r in records}


def test_the_filters_reports_add_up(built):
    out, data, subsets = built["out"], built["data"], built["subsets"]
    hand = [turn_filter_outcome(data, s, dict.fromkeys(RECIPE_AXES, 3))["reports"] for s in subsets]
    want = {a: {k: sum(h[a][k] for h in hand) for k in hand[0][a]} for a in RECIPE_AXES}
    m = read_manifest(out)
    assert {a: m.reports[a] for a in RECIPE_AXES} == want
    assert want["relevance"]["turns_removed"] and want["image_correspondence"]["missing_kept"]
    log = json.loads(next(Path(out / "_logs").glob("*.json")).read_text())
    for axis in RECIPE_AXES:
        assert {k: v for k, v in log["steps"][axis].items() if k != "throughput"} == want[axis]
    summary = f"{want['relevance']['turns_removed']:,} turns ({want['relevance']['answer_tokens_removed']:,} answer"
    assert f"relevance: {summary}" in built["stderr"]


def test_the_mixture_preset_builds_from_the_filtered_subsets(built, tmp_path):
    root = built["out"].parent
    out = tmp_path / "mix"
    run = subprocess.run(
        [*CLI, "build", "finevision_mix", "--out", str(out), "-w", "2", "-q",
         "--set", f"vars.finevision={root / 'FineVision'}", "--set", f"vars.benchmarks={root / 'benchmarks'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert verify_dataset(out).ok
    filtered = read_manifest(out / "_datasets" / "finevision")
    assert filtered.recipe["name"] == "finevision_filtered"
    assert filtered.accounting == read_manifest(built["out"]).accounting  # the same build as the CLI's
    recipe = load_recipe("finevision_mix")
    components = read_manifest(out).mixture["components"]
    assert set(components) == {c.name for c in recipe.components}  # type: ignore[union-attr]
    for c in recipe.components:  # type: ignore[union-attr]
        got = components[c.name]
        assert got["category"] == filtered.categories[c.name]
        assert got["target_share"] == pytest.approx(c.target.answer_share)
        assert got["achieved_share"] == pytest.approx(c.target.answer_share, abs=3)  # whole samples of a tiny set
