"""The FineVision reader: hub-layout parquet (real column names and Arrow types) -> sft records with the ratings in
meta; bad rating rows dropped with the reasons the reader declares; exact accounting through a real build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from curation.build.drop_reasons import is_declared
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import FineVisionSource, validate_recipe
from curation.sample import Drop, Sample
from curation.sources.base import reader_classes
from curation.sources.cauldron_catalog import cauldron_configs
from curation.sources.finevision import FineVisionReader, rating_meta
from curation.sources.finevision_catalog import finevision_category, finevision_subsets
from shards import iter_dataset, read_manifest, verify_dataset
from tests.finevision_data import BAD_KINDS, kept_rows, make_finevision

SUBSET = "sharegpt4v(coco)"


def reader(root: Path, name: str = "sharegpt4v_coco", config: str | None = SUBSET, **kw: Any) -> FineVisionReader:
    return FineVisionReader(FineVisionSource(name=name, reader="finevision", path=str(root), config=config, **kw))


def read_all(r: FineVisionReader) -> list[Sample | Drop]:
    return [item for p in r.plan() for item in r.read(p)]


def test_rows_become_sft_records_with_ratings_in_meta(tmp_path):
    read_drops = [d for d, (step, _) in BAD_KINDS.items() if step == "read"]
    data = make_finevision(
        tmp_path, {SUBSET: 23, "text_openhermes_2_5": 6}, files_per_subset=2, row_group_size=3, bad={SUBSET: read_drops}
    )
    r = reader(tmp_path, partition_size=4)
    assert r.record_kind() == "sft" and r.category() == "captioning_knowledge"
    items = read_all(r)
    expected = data["subsets"][SUBSET]["expected"]
    assert [i.record.key if isinstance(i, Sample) else i.key for i in items] == [e["key"] for e in expected]
    for item, e in zip(items, expected, strict=True):
        if "reason" in e:
            assert isinstance(item, Drop) and item.reason == e["reason"], e["defect"]
            assert item.record is not None or e["defect"] == "null_texts"  # the rejects keep what was read
            continue
        assert isinstance(item, Sample)
        assert item.record.images == e["images"]
        assert [t.model_dump() for t in item.record.turns] == e["turns"]
        assert item.record.meta == e["meta"]
        assert all(len(v) == len(e["turns"]) for v in item.record.meta["ratings"].values())
    # every 7th row has no image_correspondence ratings: the axis is absent, not defaulted
    unrated = [i for i in items if isinstance(i, Sample) and "image_correspondence" not in i.record.meta["ratings"]]
    assert unrated and all("image_correspondence_min" not in i.record.meta for i in unrated)

    # A text-only subset whose files have only the text axes: no images, two axes.
    text = [i for i in read_all(reader(tmp_path, "openhermes", "text_openhermes_2_5")) if isinstance(i, Sample)]
    assert len(text) == 6 and all(s.record.images == [] for s in text)
    assert all(set(s.record.meta["ratings"]) == {"relevance", "formatting"} for s in text)
    assert [s.record.meta for s in text] == [e["meta"] for e in kept_rows(data, "text_openhermes_2_5")]


@pytest.mark.parametrize(
    ("row", "turns", "expected"),
    [
        ({}, 2, {}),  # no rating columns: no ratings
        ({"relevance_ratings": None, "relevance_min": None}, 1, {}),
        ({"relevance_ratings": None, "relevance_min": 4}, 3, {"relevance_min": 4}),  # a minimum alone
        (
            {"formatting_ratings": [3, 5], "formatting_min": None, "relevance_ratings": [4, 2], "relevance_min": 2},
            2,
            {"ratings": {"relevance": [4, 2], "formatting": [3, 5]}, "relevance_min": 2, "formatting_min": 3},
        ),
        ({"relevance_ratings": [3, True]}, 2, ("invalid_rating:relevance", "holds True")),
        ({"relevance_ratings": [3, 4.0]}, 2, ("invalid_rating:relevance", "holds 4.0")),
        ({"relevance_ratings": [3, 6]}, 2, ("invalid_rating:relevance", "holds 6")),
        ({"relevance_ratings": "3,4"}, 2, ("invalid_rating:relevance", "not a list")),
        ({"formatting_ratings": [3]}, 2, ("ratings_not_per_turn:formatting", "1 formatting ratings for 2 turns")),
        ({"visual_dependency_ratings": [], "visual_dependency_min": 3}, 1, ("ratings_not_per_turn:visual_dep", "")),
        ({"image_correspondence_ratings": [2, 5], "image_correspondence_min": 5}, 2, ("rating_min_mismatch:", "")),
        ({"relevance_min": 5.5}, 1, ("invalid_rating:relevance", "relevance_min is 5.5")),
    ],
)
def test_rating_meta(row, turns, expected):
    got = rating_meta(row, turns)
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and got[0].startswith(expected[0]) and expected[1] in got[1]
        assert is_declared(got[0], FineVisionReader.drop_reasons)
    else:
        assert got == expected


def test_the_subset_catalog():
    subsets = finevision_subsets()
    assert len(subsets) == 185
    assert subsets["CoSyn_400k_chart"] == "chart_table" and subsets["LLaVA_Instruct_150K"] == "general_vqa"
    assert subsets["text_openhermes_2_5"] == "text_only" and subsets["sharegpt4v(sam)"] == "captioning_knowledge"
    assert set(cauldron_configs()) - set(subsets) == {"ai2d", "okvqa"}  # ai2d is ai2d_merged in FineVision
    assert finevision_category("not_a_subset") is None
    assert reader(Path("."), "x", "not_a_subset").category() is None
    declared = reader(Path("."), "x", "CoSyn_400k_chart", category="table")  # the recipe's category wins
    assert declared.category() == "table"
    assert reader_classes()["finevision"] is FineVisionReader


def test_a_missing_subset_is_one_line_with_a_hint(tmp_path):
    make_finevision(tmp_path, {"CoSyn_400k_chart": 2})
    with pytest.raises(CurationError, match=r"no config 'CoSyn_400k_chrt'.*did you mean 'CoSyn_400k_chart'"):
        reader(tmp_path, "c", "CoSyn_400k_chrt").plan()


def test_saved_datasets_are_read_too(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    data = make_finevision(tmp_path / "hub", {"chartqa": 9}, bad={"chartqa": ["min_mismatch"]})
    ds = datasets.Dataset.from_parquet([str(f) for f in data["subsets"]["chartqa"]["files"]])
    assert isinstance(ds, datasets.Dataset)
    ds.save_to_disk(str(tmp_path / "saved"))
    items = read_all(reader(tmp_path / "saved", "chartqa", None, partition_size=4))
    expected = data["subsets"]["chartqa"]["expected"]
    assert [i.reason if isinstance(i, Drop) else None for i in items] == [e.get("reason") for e in expected]
    assert [i.record.meta for i in items if isinstance(i, Sample)] == [e["meta"] for e in kept_rows(data, "chartqa")]


def test_build_accounts_for_every_row(tmp_path):
    bad = {SUBSET: list(BAD_KINDS), "CoSyn_400k_chart": ["null_rating", "corrupt_image"]}
    data = make_finevision(
        tmp_path / "fv", {SUBSET: 17, "CoSyn_400k_chart": 9, "text_openhermes_2_5": 5}, files_per_subset=2, bad=bad
    )
    names = {SUBSET: "sharegpt4v_coco", "CoSyn_400k_chart": "cosyn_chart", "text_openhermes_2_5": "openhermes"}
    recipe = {
        "kind": "build",
        "name": "fv",
        "sources": [
            {"name": n, "reader": "finevision", "path": str(data["root"]), "config": s, "partition_size": 4}
            for s, n in names.items()
        ],
        "output": {"kind": "sft", "max_samples_per_shard": 5, "rejects": True, "sidecar_scores": ["relevance_min"]},
    }
    result = build(validate_recipe(recipe), tmp_path / "out", workers=2, progress=False)
    m = read_manifest(result.out)
    assert verify_dataset(result.out).ok
    records: dict[str, list] = {}
    for rec in iter_dataset(result.out):
        records.setdefault(rec.source, []).append(rec)
    for subset, name in names.items():
        s = data["subsets"][subset]
        dropped = {**s["drops"]["read"], **s["drops"]["probe"]}
        assert m.accounting["sources"][name] == {"input": s["rows"], "output": s["kept"], "dropped": dropped}
        assert [r.meta for r in records.get(name, [])] == [e["meta"] for e in kept_rows(data, subset)]
    assert m.categories == {"sharegpt4v_coco": "captioning_knowledge", "cosyn_chart": "chart_table",
                            "openhermes": "text_only"}  # fmt: skip
    steps = {s["step"]: s["sources"] for s in m.accounting["steps"]}
    assert steps["read"]["cosyn_chart"]["dropped"] == {"invalid_rating:relevance": 1}
    assert steps["probe"]["cosyn_chart"]["dropped"] == {"image_unreadable": 1}


def test_null_ratings_drop_the_row_or_leave_the_turn_unrated():
    from curation.sources.finevision import rating_meta

    row = {"relevance_ratings": [4, None, 2], "relevance_min": 2}
    assert rating_meta(row, 3)[0] == "invalid_rating:relevance"
    assert rating_meta(row, 3, nulls_unrated=True) == {"ratings": {"relevance": [4, None, 2]}, "relevance_min": 2}
    unrated = rating_meta({"relevance_ratings": [None, None]}, 2, nulls_unrated=True)
    assert unrated == {"ratings": {"relevance": [None, None]}, "relevance_min": None}
