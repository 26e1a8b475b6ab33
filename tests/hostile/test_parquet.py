"""Hostile parquet inputs for the row readers (``parquet``, ``cauldron``): a file that is not parquet, empty,
truncated or damaged mid-file, columns of the wrong type, FIFOs and folders named like inputs. Each gives a
drop with a reason or one clear error; the accounting stays exact and ``verify`` passes."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from shards.verify import verify_dataset
from tests.helpers import png


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"images": [{"bytes": png(seed=i), "path": None}], "texts": [{"user": f"q{i}?", "assistant": f"a{i}."}]}
        for i in range(start, start + n)
    ]


def _build(tmp_path: Path, path: Path, reader: str = "parquet") -> dict[str, Any]:
    """Build ``path``; the source's accounting, after checking the build verifies."""
    source: dict[str, Any] = {"name": "s", "reader": reader, "path": str(path)}
    if reader == "parquet":
        source |= {"record": "sft", "fields": {"turns": "texts"}, "partition_size": 10}
    else:
        source["config"] = "ai2d"
    recipe = validate_recipe({"kind": "build", "name": "pq", "sources": [source], "output": {"kind": "sft"}}, "t")
    out = tmp_path / "out"
    build(recipe, out, workers=1, progress=False)
    report = verify_dataset(out)
    assert report.ok, report.problems
    return json.loads((out / "dataset.json").read_text())["accounting"]["sources"]["s"]


def _damaged(tmp_path: Path) -> Path:
    """Two row groups of 10 rows; the second one's data overwritten with garbage."""
    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(20)), path, row_group_size=10, compression="snappy")
    meta = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = meta.dictionary_page_offset or meta.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 40 : start + 400] = os.urandom(360)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_row_group_drops_its_rows_and_keeps_the_rest(tmp_path: Path):
    counts = _build(tmp_path, _damaged(tmp_path))
    assert counts["input"] == 20 and counts["output"] == 10
    assert counts["dropped"] == {"file_unreadable": 10}


def test_columns_of_the_wrong_type_are_drops(tmp_path: Path):
    path = tmp_path / "types.parquet"
    rows = [
        {"images": "not-a-list-of-structs.png", "texts": "a string, not turns"},
        {"images": None, "texts": [{"user": 5, "assistant": None}]},
        {"images": [{"bytes": b"\xff\xd8 not an image", "path": None}], "texts": [{"user": "q?", "assistant": "a"}]},
        _rows(1)[0],
    ]
    pq.write_table(pa.Table.from_pylist([{k: json.dumps(v, default=str) for k, v in r.items()} for r in rows]), path)
    counts = _build(tmp_path, path)
    assert counts["input"] == 4 and counts["input"] == counts["output"] + sum(counts["dropped"].values())
    assert counts["output"] == 0  # json-encoded columns are strings: no row is a valid sample


def _fifo_beside_a_good_file(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(3)), folder / "good.parquet")
    os.mkfifo(folder / "fifo.parquet")
    (folder / "dir.parquet").mkdir()
    return folder


def test_fifos_and_folders_named_like_inputs_are_not_read(tmp_path: Path):
    timer = threading.Timer(30, lambda: os._exit(3))  # a read of the FIFO would block forever
    timer.start()
    try:
        counts = _build(tmp_path, _fifo_beside_a_good_file(tmp_path))
    finally:
        timer.cancel()
    assert (counts["input"], counts["output"]) == (3, 3)


UNREADABLE: dict[str, Callable[[Path], Path]] = {
    "empty": lambda p: (p / "x.parquet", (p / "x.parquet").write_bytes(b""))[0],
    "garbage": lambda p: (p / "x.parquet", (p / "x.parquet").write_bytes(os.urandom(5000)))[0],
    "truncated": lambda p: (
        p / "x.parquet",
        pq.write_table(pa.Table.from_pylist(_rows(5)), p / "full.parquet"),
        (p / "x.parquet").write_bytes((p / "full.parquet").read_bytes()[:-100]),
    )[0],
    "fifo": lambda p: (p / "x.parquet", os.mkfifo(p / "x.parquet"))[0],
    "dev_zero": lambda p: Path("/dev/zero"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", ["parquet", "cauldron"])
@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_input_that_is_not_parquet_is_one_clear_error_before_anything_is_written(
    tmp_path: Path, case: str, reader: str
):
    path = UNREADABLE[case](tmp_path)
    if reader == "cauldron":  # the Cauldron layout: <folder>/<config>/train-*.parquet
        config = tmp_path / "cauldron" / "ai2d"
        config.mkdir(parents=True)
        target = config / "train-00000-of-00001.parquet"
        target.symlink_to(path) if case == "dev_zero" else path.rename(target)  # a config file that is a device
        path = tmp_path / "cauldron"
    with pytest.raises(CurationError) as err:
        _build(tmp_path, path, reader)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600 and "no config" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar"))
