"""Every input row leaves kept or dropped, whatever goes wrong while reading it; ``verify`` catches a build
whose plan and accounting disagree."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.partition import read_every_row
from curation.build.runner import build
from curation.recipe import validate_recipe
from curation.sample import Drop, Sample
from curation.sources import Partition, Reader
from shards.verify import verify_dataset
from tests.helpers import png


def _parquet_build(tmp_path: Path, image_paths: list[str]) -> dict:
    data = tmp_path / "in.parquet"
    rows = [{"images": [{"bytes": None, "path": p}], "texts": [{"user": "q?", "assistant": "a."}]} for p in image_paths]
    pq.write_table(pa.Table.from_pylist(rows), data)
    recipe = validate_recipe(
        {
            "kind": "build",
            "name": "rows",
            "sources": [
                {"name": "s", "reader": "parquet", "path": str(data), "record": "sft", "fields": {"turns": "texts"}}
            ],
            "output": {"kind": "sft"},
        },
        "test",
    )
    out = tmp_path / "out"
    build(recipe, out, workers=1, progress=False)
    assert verify_dataset(out).ok, verify_dataset(out).problems
    return json.loads((out / "dataset.json").read_text())["accounting"]["sources"]["s"]


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo.png"
    os.mkfifo(path)
    return str(path)


def _loop(tmp_path: Path) -> str:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return str(tmp_path / "a")


def _not_a_dir(tmp_path: Path) -> str:
    (tmp_path / "file.png").write_bytes(png())
    return str(tmp_path / "file.png" / "x.png")


BAD_PATHS = {
    "not_a_directory": (_not_a_dir, "unreadable_image_file"),
    "name_too_long": (lambda t: str(t / ("x" * 300 + ".png")), "unreadable_image_file"),
    "symlink_loop": (_loop, "unreadable_image_file"),
    "fifo": (_fifo, "not_a_regular_file"),  # reading it would block forever
    "dev_zero": (lambda t: "/dev/zero", "not_a_regular_file"),  # reading it would never end
    "directory": (lambda t: str(t), "unreadable_image_file"),
    "missing": (lambda t: str(t / "nope.png"), "missing_image_file"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_an_image_path_that_fails_in_any_way_is_a_drop_and_the_next_row_is_kept(tmp_path: Path, case: str):
    make, reason = BAD_PATHS[case]
    good = tmp_path / "good.png"
    good.write_bytes(png())
    counts = _parquet_build(tmp_path, [make(tmp_path), str(good)])
    assert (counts["input"], counts["output"], counts["dropped"]) == (2, 1, {reason: 1})


def test_an_image_file_over_the_cap_is_dropped_before_it_is_read(tmp_path: Path, monkeypatch):
    import curation.sources.base as base

    monkeypatch.setattr(base, "MAX_IMAGE_FILE_BYTES", 1000)
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(10**9)  # sparse: a gigabyte claimed, nothing on disk
    with pytest.raises(base.ImageFileError) as err:
        base.load_image_file(str(big), None)
    assert err.value.reason == "image_file_too_large"


class _Reader(Reader):
    """A reader that yields ``good`` rows and then fails as told."""

    def __init__(self, good: int, then: str) -> None:
        self.good, self.then = good, then

    def plan(self) -> list[Partition]:
        return []

    def record_kind(self) -> str:
        return "pair"

    def read(self, partition: Partition) -> Iterator[Sample | Drop]:
        for i in range(self.good):
            yield Drop("fine", partition.source, f"row{i}")
        if self.then == "raise":
            raise OSError(5, "Input/output error")
        if self.then == "extra":
            yield Drop("fine", partition.source, "one too many")


@pytest.mark.parametrize(("then", "reason"), [("raise", "reader_error"), ("stop", "rows_missing")])
def test_rows_a_reader_loses_are_dropped_with_the_reason(then: str, reason: str):
    part = Partition("s", 0, 5, {"file": "in.jsonl"})
    items = list(read_every_row(_Reader(2, then), part))
    assert [i.reason for i in items[:2]] == ["fine", "fine"]
    assert (items[2].reason, items[2].count, items[2].origin) == (reason, 3, "in.jsonl")
    assert sum(i.count for i in items) == 5


def test_a_reader_giving_more_rows_than_planned_is_a_bug():
    with pytest.raises(RuntimeError, match="gave 3 rows for a partition of 2"):
        list(read_every_row(_Reader(2, "extra"), Partition("s", 0, 2, {})))


def test_verify_catches_rows_that_vanished_between_plan_and_accounting(tmp_path: Path):
    good = tmp_path / "good.png"
    good.write_bytes(png())
    _parquet_build(tmp_path, [str(good), str(good)])
    stats_path = tmp_path / "out" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["partitions"][0]["rows"] += 1  # the plan counted a row the accounting never saw
    stats_path.write_text(json.dumps(stats))
    problems = verify_dataset(tmp_path / "out").problems
    assert any("planned 3 rows, 2 were read" in p for p in problems), problems
    assert any("source 's': planned 3 rows, 2 were read" in p for p in problems), problems
