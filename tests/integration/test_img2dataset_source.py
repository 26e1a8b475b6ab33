"""An existing img2dataset download as a source (``reader: img2dataset``): img2dataset itself downloads from a loopback
server (URLs that 404, answer a web page, or time out) into its webdataset, parquet and files layouts; builds read
them back with every URL accounted for, and damaged downloads give drops or one clear error."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import Img2datasetSource, ShardsSource, validate_recipe
from curation.report.audit import audit
from curation.sample import Drop
from curation.sources import make_reader
from schemas import PairRecord
from shards import iter_dataset, read_manifest, verify_dataset
from shards.reader import iter_samples
from tests.img2dataset_data import FAILED, FORMATS, N_IMAGES, N_URLS, download_formats
from tests.img2dataset_data import recipe as _recipe


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict:
    """The same URL list downloaded by ``img2dataset.download`` into each output format (the three at once)."""
    return download_formats(tmp_path_factory.mktemp("img2dataset"))


def _build(path: Path, out: Path, **source):
    return build(validate_recipe(_recipe(path, **source)), out, workers=1, progress=False)


def _copy(downloads: dict, fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(downloads["root"] / fmt, tmp_path / fmt))


def _read(path: Path) -> tuple[list, Counter]:
    reader = make_reader(Img2datasetSource(name="web", reader="img2dataset", path=str(path)))
    samples, drops = [], Counter()
    for part in reader.plan():
        for item in reader.read(part):
            if isinstance(item, Drop):
                drops[item.reason] += item.count
            else:
                samples.append(item)
    return samples, drops


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_output_format_is_read_with_every_url_accounted_for(downloads, fmt, tmp_path):
    layout = sorted(p.name for p in (downloads["root"] / fmt).iterdir())
    expected_layout = {
        "webdataset": [
            "00000.parquet",
            "00000.tar",
            "00000_stats.json",
            "00001.parquet",
            "00001.tar",
            "00001_stats.json",
        ],
        "parquet": ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"],
        "files": ["00000", "00000.parquet", "00000_stats.json", "00001", "00001.parquet", "00001_stats.json"],
    }
    assert layout == expected_layout[fmt]  # img2dataset's real layout, detected (format: auto)

    result = _build(downloads["root"] / fmt, tmp_path / "ds")
    acc = result.manifest.accounting["sources"]["web"]
    assert acc["input"] == N_URLS and acc["output"] == N_IMAGES
    assert acc["dropped"] == dict(sorted(FAILED.items()))
    assert acc["output"] + sum(acc["dropped"].values()) == N_URLS  # every URL img2dataset was given
    assert verify_dataset(tmp_path / "ds").ok
    records = [r for r in iter_dataset(tmp_path / "ds") if isinstance(r, PairRecord)]
    assert len(records) == N_IMAGES
    names = []
    for r in records:
        url = str(r.meta["url"])
        names.append(name := url.rsplit("/", 1)[1])
        assert r.image == downloads["served"][name]  # the served bytes
        assert r.caption == downloads["captions"][url]
        assert r.key == f"web-{r.meta['shard']}-{r.meta['img2dataset_key']}"
        assert r.meta["width"] == 200 + int(name.split(".")[0]) and r.meta["height"] == 150
        assert len(str(r.meta["sha256"])) == 64 and isinstance(r.meta["similarity"], float)
    assert sorted(names) == sorted(downloads["served"])

    # the audit shows the same accounting, drops by reason
    report = audit(tmp_path / "ds")
    assert report["sources"]["web"]["input"] == N_URLS and report["sources"]["web"]["samples"] == N_IMAGES
    assert report["sources"]["web"]["dropped"] == FAILED == report["dropped_by_step"]["read"]

    # each failed URL's drop names its row, relative to the download folder, and keeps the URL in rejects/
    rejects = _rejects(tmp_path / "ds")
    assert sorted(r["reason"] for r in rejects) == sorted(FAILED)
    assert all(r["origin"].startswith(("00000.parquet#", "00001.parquet#")) for r in rejects)
    assert {r["raw"]["url"].rsplit("/", 1)[1] for r in rejects} == {"missing.jpg", "page.jpg", "0.jpg"}


def _rejects(directory: Path) -> list[dict]:
    """Each kept drop's reject.json, with its raw.json as ``raw``."""
    out = []
    for shard in read_manifest(directory).rejects:
        for sample in iter_samples(directory / shard.name):
            raw = sample.members.get("raw.json")
            out.append({**json.loads(sample.members["reject.json"]), "raw": json.loads(raw) if raw else None})
    return out


def _rewrite_tar(path: Path, change) -> None:
    """Rewrite ``path`` member by member: ``change(info, data)`` returns the (info, data) to write, or None."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            kept = change(info, data)
            if kept is not None:
                info, data = kept
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_damaged_tars_give_drops_for_the_rows_they_cannot_give(downloads, tmp_path):
    root = _copy(downloads, "webdataset", tmp_path)
    with tarfile.open(root / "00000.tar") as tar:
        images = [m.name for m in tar.getmembers() if m.name.endswith(".jpg")]
    gone, garbage, linked = images[0], images[1], images[2]

    def change(info: tarfile.TarInfo, data: bytes):
        if info.name == gone:
            return None  # img2dataset lists a success the tar lacks
        if info.name == garbage:
            return info, b"<html>not an image</html>"
        if info.name == linked:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            return info, b""
        return info, data

    _rewrite_tar(root / "00000.tar", change)
    tar1 = root / "00001.tar"
    with tarfile.open(tar1) as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    tar1.write_bytes(tar1.read_bytes()[: image.offset_data + image.size // 2])  # cut off inside its one image
    samples, drops = _read(root)
    assert drops == {
        **FAILED,
        "download_missing": 1,
        "not_a_regular_file": 1,
        "shard_damaged": 1,
    }
    assert len(samples) == N_IMAGES - 3  # the page is still a sample here: the build's probe drops it
    result = _build(root, tmp_path / "ds")
    acc = result.manifest.accounting
    assert acc["sources"]["web"]["input"] == N_URLS
    assert acc["sources"]["web"]["output"] == N_IMAGES - 4
    probe = next(s for s in acc["steps"] if s["step"] == "probe")["sources"]["web"]["dropped"]
    assert probe == {"image_unreadable": 1}


def test_a_tar_that_is_gone_or_not_a_tar_and_stats_counting_more_rows(downloads, tmp_path):
    root = _copy(downloads, "webdataset", tmp_path)
    (root / "00000.tar").unlink()
    (root / "00001.tar").write_bytes(b"not a tar at all" * 100)
    stats = json.loads((root / "00001_stats.json").read_text())
    stats["count"] += 2  # img2dataset wrote no parquet row for two samples whose writing raised
    (root / "00001_stats.json").write_text(json.dumps(stats))
    samples, drops = _read(root)
    assert samples == []
    assert drops == {**FAILED, "download_missing": 5 + 2, "shard_damaged": 1}


def test_missing_files_in_the_files_layout_and_a_parquet_cut_off(downloads, tmp_path):
    root = _copy(downloads, "files", tmp_path)
    first, second, third = sorted((root / "00000").glob("*.jpg"))[:3]
    first.unlink()
    second.unlink()
    os.mkfifo(second)  # never opened: it would block
    third.unlink()
    third.symlink_to(next((root / "00001").glob("*.jpg")))  # an image, but never followed
    samples, drops = _read(root)
    assert len(samples) == N_IMAGES - 3 and drops == {**FAILED, "download_missing": 1, "not_a_regular_file": 2}

    root = _copy(downloads, "parquet", tmp_path / "p")
    data = (root / "00000.parquet").read_bytes()
    (root / "00000.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(CurationError, match=r"cannot read parquet file .*00000\.parquet"):
        _read(root)


def test_plan_errors_name_the_problem(downloads, tmp_path):
    root = _copy(downloads, "webdataset", tmp_path)
    (root / "00001.parquet").unlink()
    with pytest.raises(CurationError, match=r"^sources\.web\.path: shard 00001 has no 00001\.parquet"):
        _read(root)

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    pq.write_table(pa.table({"url": ["http://x/a.jpg"]}), other / "urls.parquet")
    with pytest.raises(CurationError, match=r"is not img2dataset output"):
        _read(other)
    with pytest.raises(CurationError, match=r"no such directory"):
        _read(tmp_path / "nowhere")

    only_parquet = tmp_path / "pq"
    shutil.copytree(downloads["root"] / "webdataset", only_parquet)
    for tar in only_parquet.glob("*.tar"):
        tar.unlink()
    with pytest.raises(CurationError, match=r"00000\.parquet has no image column"):
        _read(only_parquet)  # auto finds neither tars nor folders nor images: say so, do not drop it all

    # the shards source, pointed at img2dataset output, says which reader reads it
    with pytest.raises(CurationError, match=r"is not a built dataset.*reader: img2dataset"):
        make_reader(ShardsSource(name="web", reader="shards", path=str(downloads["root"] / "webdataset")))


def test_limit_cuts_within_a_shard_and_keys_are_stable(downloads, tmp_path):
    path = downloads["root"] / "parquet"
    a = _build(path, tmp_path / "a", limit=3).manifest.accounting["sources"]["web"]
    assert a["input"] == 3 and a["output"] == 3
    keys = [r.key for r in iter_dataset(tmp_path / "a")]
    moved = shutil.copytree(path, tmp_path / "elsewhere")  # the keys do not depend on where the download lies
    _build(moved, tmp_path / "b", limit=3)
    assert keys == [r.key for r in iter_dataset(tmp_path / "b")]
    assert all(k.startswith("web-00000-") for k in keys)
