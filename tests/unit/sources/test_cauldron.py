"""The Cauldron / Docmatix reader: the local HF layout by row groups, and anything ``datasets`` opens."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.plan import plan_partitions
from curation.errors import CurationError
from curation.recipe import CauldronSource, validate_recipe
from curation.sample import Drop, Sample
from curation.sources.base import Partition
from curation.sources.cauldron import CauldronReader
from tests.cauldron_data import kept_rows, make_cauldron


def reader(path: Path | str, name: str = "ai2d", **kw: Any) -> CauldronReader:
    return CauldronReader(CauldronSource(name=name, reader="cauldron", path=str(path), **kw))


def read_all(r: CauldronReader, parts: list[Partition] | None = None) -> list[Sample | Drop]:
    return [item for p in (r.plan() if parts is None else parts) for item in r.read(p)]


def key_of(item: Sample | Drop) -> str | None:
    return item.record.key if isinstance(item, Sample) else item.key


def check_samples(items: list[Sample | Drop], expected: list[dict]) -> None:
    """Kept rows become samples with identical image bytes, the turns and the meta; keys follow the input order."""
    samples = [i for i in items if isinstance(i, Sample)]
    assert [s.record.key for s in samples] == [e["key"] for e in expected]
    for s, e in zip(samples, expected, strict=True):
        assert s.record.images == e["images"]
        assert [t.model_dump() for t in s.record.turns] == e["turns"]
        assert s.record.meta == e["meta"]


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """``datasets`` caches under tmp_path and never reaches the hub."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


# ---- the local HF layout -------------------------------------------------------------------------------------------
def test_local_layout_reads_images_turns_and_meta(tmp_path):
    data = make_cauldron(tmp_path, {"ai2d": 17, "images": 7}, files_per_config=2, row_group_size=3)
    r = reader(tmp_path, partition_size=4)
    items = read_all(r)
    assert len(items) == 17 and all(isinstance(i, Sample) for i in items)
    check_samples(items, kept_rows(data, "ai2d"))
    assert items[0].record.source == "ai2d"
    assert items[0].origin == f"{data['configs']['ai2d']['files'][0]}#0"
    mixed = [i.record.meta for i in items if "turn_sources" in i.record.meta]
    assert mixed and all(len(set(m["turn_sources"])) > 1 for m in mixed)  # per-turn sources kept when they differ
    assert r.record_kind() == "sft" and r.category() == "reasoning_maths"

    # Docmatix-like: several images and many turns per row; the source is one PDFA key per row.
    docs = read_all(reader(tmp_path, name="docmatix", config="images"))
    check_samples(docs, kept_rows(data, "images"))
    assert {len(d.record.images) for d in docs} == {1, 2, 3, 4}
    assert max(len(d.record.turns) for d in docs) >= 8
    assert docs[3].record.meta == {"config": "images", "source_id": "PDFA key: 1003"}
    assert reader(tmp_path, name="docmatix", config="images").category() is None
    assert reader(tmp_path, name="docs", config="images", category="ocr_document").category() == "ocr_document"


def test_partitions_are_whole_row_groups_and_limit_reads_a_prefix(tmp_path):
    data = make_cauldron(tmp_path, {"chartqa": 20}, files_per_config=2, row_group_size=3)
    r = reader(tmp_path, name="chartqa", partition_size=5)
    parts = r.plan()
    assert [p.rows for p in parts] == [6, 4, 6, 4]  # per file: 10 rows in groups of 3, 3, 3, 1
    assert [p.spec["row_groups"] for p in parts] == [[0, 1], [2, 3], [0, 1], [2, 3]]
    assert all(p.spec["mode"] == "parquet" and p.spec["config"] == "chartqa" for p in parts)
    assert [key_of(i) for i in read_all(r, parts)] == [e["key"] for e in data["configs"]["chartqa"]["expected"]]

    recipe = validate_recipe(
        {
            "name": "t",
            "sources": [{"name": "chartqa", "reader": "cauldron", "path": str(tmp_path), "partition_size": 5}],
            "output": {"kind": "sft"},
        }
    )
    limited = plan_partitions(recipe, limit=8)
    assert [p.rows for p in limited] == [6, 2]
    items = read_all(r, limited)
    check_samples(items, kept_rows(data, "chartqa")[:8])


def test_image_structs_with_null_bytes_read_the_files(tmp_path):
    data = make_cauldron(tmp_path / "c", {"vqav2": 6}, path_images={"vqav2": 3})
    table = pq.read_table(data["configs"]["vqav2"]["files"][0])
    structs = table.column("images").to_pylist()
    assert [s[0]["bytes"] is None for s in structs] == [False] * 3 + [True] * 3
    check_samples(read_all(reader(tmp_path / "c", name="vqav2")), kept_rows(data, "vqav2"))

    # Relative paths start from image_root when given (here: the images moved away from the parquet).
    shutil.move(tmp_path / "c" / "vqav2" / "images", tmp_path / "elsewhere")
    moved = read_all(reader(tmp_path / "c", name="vqav2"))
    assert [i.reason for i in moved if isinstance(i, Drop)] == ["missing_image_file"] * 3
    rooted = read_all(reader(tmp_path / "c", name="vqav2", image_root=str(tmp_path)))
    assert all(isinstance(i, Drop) for i in rooted[3:])  # images/... is not under tmp_path any more
    (tmp_path / "r").mkdir()
    shutil.move(tmp_path / "elsewhere", tmp_path / "r" / "images")
    check_samples(
        read_all(reader(tmp_path / "c", name="vqav2", image_root=str(tmp_path / "r"))), kept_rows(data, "vqav2")
    )


def test_bad_rows_are_drops_with_reasons(tmp_path):
    defects = ["null_texts", "empty_texts", "null_user", "null_assistant", "null_image", "missing_image_file"]
    data = make_cauldron(tmp_path, {"tqa": 14}, bad={"tqa": [*defects, "corrupt_image"]})
    items = read_all(reader(tmp_path, name="tqa"))
    assert len(items) == 14
    expected = data["configs"]["tqa"]["expected"]
    for item, e in zip(items, expected, strict=True):
        assert key_of(item) == e["key"]
        if e.get("step") == "read":
            assert isinstance(item, Drop) and item.reason == e["reason"], (e["defect"], item)
            assert item.source == "tqa" and item.detail
        else:  # an undecodable image is found by the build's probe step, not the reader
            assert isinstance(item, Sample)
    drops = [i for i in items if isinstance(i, Drop)]
    assert sorted(d.reason for d in drops) == sorted(
        ["invalid_record:turns"] * 4 + ["invalid_image_field", "missing_image_file"]
    )
    assert "turns.0.user" in next(d.detail for d in drops if "user" in d.detail)


def test_unreadable_file_loses_its_rows_as_counted_drops(tmp_path):
    data = make_cauldron(tmp_path, {"iam": 9}, row_group_size=3)
    r = reader(tmp_path, name="iam", partition_size=3)
    parts = r.plan()
    path = data["configs"]["iam"]["files"][0]
    path.write_bytes(path.read_bytes()[:200])  # damaged after planning
    items = read_all(r, parts)
    assert len(items) == 9 and {i.reason for i in items} == {"file_unreadable"}


def test_missing_config_names_the_present_ones_with_a_suggestion(tmp_path):
    make_cauldron(tmp_path, {"ai2d": 2, "chartqa": 2, "docvqa": 2})
    with pytest.raises(CurationError, match=r"no config 'chartq'.*did you mean 'chartqa'\?.*ai2d, chartqa, docvqa"):
        reader(tmp_path, name="chartq").plan()
    with pytest.raises(CurationError, match=r"no 'test' split .*splits present: train"):
        reader(tmp_path, name="ai2d", split="test").plan()
    with pytest.raises(CurationError, match="no such directory"):
        reader(tmp_path / "nope" / "x").plan()


@pytest.mark.parametrize("layout", ["split_dir", "data_dir"])
def test_other_local_layouts(tmp_path, layout):
    data = make_cauldron(tmp_path / "src", {"okvqa": 5})
    (src_file,) = data["configs"]["okvqa"]["files"]
    dest = tmp_path / "root" / ("okvqa/train" if layout == "split_dir" else "data/okvqa")
    dest.mkdir(parents=True)
    shutil.copy(src_file, dest / (src_file.name if layout == "data_dir" else "0000.parquet"))
    r = reader(tmp_path / "root", name="okvqa")
    parts = r.plan()
    assert parts[0].spec["mode"] == "parquet"
    items = read_all(r, parts)
    assert [s.record.images for s in items] == [e["images"] for e in kept_rows(data, "okvqa")]
    with pytest.raises(CurationError, match="did you mean 'okvqa'"):
        reader(tmp_path / "root", name="okvq").plan()


# ---- anything datasets opens ---------------------------------------------------------------------------------------
def as_dataset(datasets, data: dict, config: str):
    from tests.cauldron_data import cauldron_schema

    table = pq.read_table(data["configs"][config]["files"], schema=cauldron_schema())
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path, hf_offline):
    datasets = hf_offline
    data = make_cauldron(tmp_path / "c", {"textvqa": 11}, bad={"textvqa": ["null_texts"]})
    ds = as_dataset(datasets, data, "textvqa")
    ds.save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(tmp_path / "dd")
    expected = kept_rows(data, "textvqa")

    r = reader(tmp_path / "single", name="textvqa", partition_size=4)
    parts = r.plan()
    assert [(p.rows, p.spec["mode"], p.spec["start"], p.spec["stop"]) for p in parts] == [
        (4, "disk", 0, 4),
        (4, "disk", 4, 8),
        (3, "disk", 8, 11),
    ]
    items = read_all(r, parts)
    assert len(items) == 11 and [i.reason for i in items if isinstance(i, Drop)] == ["invalid_record:turns"]
    samples = [i for i in items if isinstance(i, Sample)]
    assert [s.record.images for s in samples] == [e["images"] for e in expected]
    assert [[t.model_dump() for t in s.record.turns] for s in samples] == [e["turns"] for e in expected]
    assert [s.record.meta for s in samples] == [e["meta"] for e in expected]
    assert samples[0].record.key == "textvqa-000000000"

    test_split = read_all(reader(tmp_path / "dd", name="textvqa", split="test"))
    assert len(test_split) == 3 and test_split[0].record.key == "textvqa-test-000000000"
    with pytest.raises(CurationError, match=r"no split 'tain'.*did you mean 'train'"):
        reader(tmp_path / "dd", name="textvqa", split="tain").plan()

    # --limit cuts a row range short; a config directory saved with save_to_disk is found under the root too.
    shutil.copytree(tmp_path / "single", tmp_path / "root" / "textvqa")
    recipe = validate_recipe(
        {
            "name": "t",
            "sources": [{"name": "textvqa", "reader": "cauldron", "path": str(tmp_path / "root"), "partition_size": 4}],
            "output": {"kind": "sft"},
        }
    )
    limited = plan_partitions(recipe, limit=6)
    assert [(p.rows, p.spec["start"]) for p in limited] == [(4, 0), (2, 4)]
    assert len(read_all(reader(tmp_path / "root", name="textvqa"), limited)) == 6


def test_local_dataset_directory_for_load_dataset(tmp_path, hf_offline):
    data = make_cauldron(tmp_path / "c", {"st_vqa": 7, "visual7w": 4})
    repo = tmp_path / "repo"
    (repo / "shards").mkdir(parents=True)
    for config in ("st_vqa", "visual7w"):
        (src_file,) = data["configs"][config]["files"]
        shutil.copy(src_file, repo / "shards" / f"{config}_part0.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: st_vqa\n  data_files:\n  - split: train\n    path: shards/st_vqa_*.parquet\n"
        "- config_name: visual7w\n  data_files:\n  - split: train\n    path: shards/visual7w_*.parquet\n"
        "---\n# A local dataset repository\n"
    )
    r = reader(repo, name="st_vqa", partition_size=3)
    parts = r.plan()
    assert [(p.rows, p.spec["mode"], p.spec["name"]) for p in parts] == [(3, "load", "st_vqa")] * 2 + [
        (1, "load", "st_vqa")
    ]
    samples = read_all(r, parts)
    assert [s.record.images for s in samples] == [e["images"] for e in kept_rows(data, "st_vqa")]
    assert samples[0].record.meta == {"config": "st_vqa", "source_id": "st_vqa"}
    assert r.category() == "ocr_document"
    with pytest.raises(CurationError, match=r"no config 'visual7'.*did you mean 'visual7w'"):
        reader(repo, name="visual7").plan()

    # A plain dataset directory (data files, no configs) is read as its default config.
    plain = tmp_path / "plain"
    (plain / "data").mkdir(parents=True)
    shutil.copy(data["configs"]["visual7w"]["files"][0], plain / "data" / "train-00000-of-00001.parquet")
    plain_samples = read_all(reader(plain, name="visual7w"))
    assert [s.record.images for s in plain_samples] == [e["images"] for e in kept_rows(data, "visual7w")]
    assert plain_samples[0].record.key == "visual7w-000000000"


def test_datasets_errors_are_one_line(tmp_path, hf_offline):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CurationError) as info:
        reader(bad, name="x").plan()
    assert "datasets cannot open" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "nocols").mkdir()
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "nocols" / "train.parquet")
    with pytest.raises(CurationError, match="has no 'texts' column"):
        reader(tmp_path / "nocols", name="x").plan()


def test_non_string_turns_from_datasets_are_drops(tmp_path, hf_offline):
    datasets = hf_offline
    turn = {"user": datasets.Value("int64"), "assistant": datasets.Value("string"), "source": datasets.Value("string")}
    features = datasets.Features({"images": datasets.List(datasets.Image()), "texts": datasets.List(turn)})
    rows = {
        "images": [[], []],
        "texts": [
            [{"user": 7, "assistant": "seven", "source": "s"}],
            [{"user": None, "assistant": "x", "source": "s"}],
        ],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "ints")
    items = read_all(reader(tmp_path / "ints", name="ints"))
    assert [(i.reason, "turns.0.user" in i.detail) for i in items] == [("invalid_record:turns", True)] * 2
