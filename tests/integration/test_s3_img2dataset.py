"""An img2dataset download in a bucket (``reader: img2dataset``, ``path: s3://bucket/prefix``; moto's server on
loopback, tests/s3_server.py), read in place: each of img2dataset's three output formats builds byte for byte as the
same folder on local disk (stats.json's plan_sha256 aside: the inputs are identified by ETag there), with every URL
accounted for; the plan lists the top level only (never the images of a ``files`` download) and identifies the
parquet and stats objects; a tar object cut short or missing gives the drops a local one gives; the store's
failures are one-line errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs", reason="s3fs is not installed (the optional `s3` extra)")
pytest.importorskip("moto", reason="moto is not installed (the dev extra)")

from curation.build.plan import plan_build
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import Img2datasetSource, validate_recipe
from curation.sample import Drop
from curation.sources import img2dataset_output, make_reader
from curation.storage.store import Store
from tests.builds import tree_digest
from tests.img2dataset_data import FORMATS, N_URLS, CountedFile, download_formats, recipe
from tests.s3_server import BUCKET

pytestmark = pytest.mark.timeout(300)


def _upload(s3, root: Path, prefix: str) -> None:
    client = s3.client()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(root).as_posix()}")


@pytest.fixture(scope="module")
def downloads(s3, tmp_path_factory) -> dict:
    """img2dataset's download of the same URL list in each format, locally and at s3://vlm-test/i2d/<format>."""
    found = download_formats(tmp_path_factory.mktemp("img2dataset"))
    for fmt in FORMATS:
        _upload(s3, found["root"] / fmt, f"i2d/{fmt}")
    return found


def _build(path: Path | str, out: Path):
    return build(validate_recipe(recipe(path)), out, workers=1, progress=False)


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path, columns=["status"]).to_pylist()


def _items(path: str) -> list[tuple[str, str]]:
    """(origin relative to ``path``, drop reason or the record's JSON) of every item the reader gives."""
    reader = make_reader(Img2datasetSource(name="web", reader="img2dataset", path=path))
    found = []
    for part in reader.plan():
        for item in reader.read(part):
            where = item.origin.removeprefix(path)
            if isinstance(item, Drop):
                found.append((where, f"{item.reason} x{item.count}: {item.detail}"))
            else:
                found.append((where, item.record.model_dump_json()))
    return found


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_in_a_bucket_builds_as_the_local_folder(s3, aws_env, downloads, fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = _build(downloads["root"] / fmt, tmp_path / "local")
    url = _build(f"s3://{BUCKET}/i2d/{fmt}", tmp_path / "url")
    acc = url.manifest.accounting["sources"]["web"]
    assert acc["input"] == N_URLS and acc["output"] + sum(acc["dropped"].values()) == N_URLS  # every URL
    assert acc == local.manifest.accounting["sources"]["web"] and acc["output"] > 0
    a, b = tree_digest(local.out), tree_digest(url.out)
    assert set(a) == set(b) and {k for k in a if a[k] != b[k]} == {"stats.json"}
    local_stats, url_stats = (json.loads((d / "stats.json").read_text()) for d in (local.out, url.out))
    assert local_stats.pop("plan_sha256") != url_stats.pop("plan_sha256")  # inputs by sha256 there, by ETag here
    assert local_stats == url_stats
    manifest = json.loads((url.out / "dataset.json").read_text())
    assert manifest["recipe"]["sources"][0]["path"] == "."  # relative to the input root: no bucket named
    assert not (tmp_path / "s3:").exists()


def test_the_plan_lists_the_top_level_only_and_identifies_parquet_and_stats(s3, aws_env, downloads, monkeypatch):
    calls: list[tuple[str, dict[str, Any]]] = []
    original = Store._call

    def counted(self: Store, method: str, **kwargs: Any) -> dict[str, Any]:
        calls.append((method, kwargs))
        return original(self, method, **kwargs)

    monkeypatch.setattr(Store, "_call", counted)
    plan = plan_build(validate_recipe(recipe(f"s3://{BUCKET}/i2d/files")), None)
    assert sorted(plan.doc["inputs"]) == ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"]
    assert all(etag.startswith("etag:") for _, etag in plan.doc["inputs"].values())
    listings = [kw for method, kw in calls if method == "list_objects_v2"]
    assert listings and all(kw.get("MaxKeys") == 1 or kw.get("Delimiter") == "/" for kw in listings), listings
    assert {kw["Prefix"] for kw in listings if kw.get("Delimiter")} == {"i2d/files/"}  # never a shard folder
    assert plan.rows == N_URLS


def _damage(root: Path) -> None:
    """00000.tar gone, 00001.tar cut off inside its first image."""
    (root / "00000.tar").unlink()
    tar1 = root / "00001.tar"
    with tarfile.open(tar1) as tar:
        image = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    tar1.write_bytes(tar1.read_bytes()[: image.offset_data + image.size // 2])


def test_a_tar_cut_short_or_missing_in_the_bucket_drops_as_locally(s3, aws_env, downloads, tmp_path, monkeypatch):
    root = Path(shutil.copytree(downloads["root"] / "webdataset", tmp_path / "damaged"))
    _damage(root)
    _upload(s3, root, "damaged")
    local = _items(str(root))
    assert _items(f"s3://{BUCKET}/damaged") == local
    reasons = {what.split(" ")[0] for _, what in local if not what.startswith("{")}
    assert {"download_missing", "shard_damaged"} <= reasons and len(local) == N_URLS
    assert any("00000.tar is missing" in what for _, what in local)
    monkeypatch.chdir(tmp_path)
    a = _build(root, tmp_path / "local").out
    b = _build(f"s3://{BUCKET}/damaged", tmp_path / "url").out
    da, db = tree_digest(a), tree_digest(b)
    assert {k for k in da if da[k] != db.get(k)} == {"stats.json"}


def test_a_downloaded_tar_is_read_once_forward(downloads, monkeypatch):
    """img2dataset writes the tar and the parquet in the same order: the lazy header scan never goes back."""
    log: dict = {"read": 0, "seeks": []}
    monkeypatch.setattr(img2dataset_output, "open_regular", lambda path: CountedFile(path, log))
    items = _items(str(downloads["root"] / "webdataset"))
    successes = sum(
        r["status"] == "success" for f in (downloads["root"] / "webdataset").glob("*.parquet") for r in _rows(f)
    )
    assert sum(1 for _, what in items if what.startswith("{")) == successes > 0
    seeks = log["seeks"]
    assert seeks and all(after >= before - tarfile.BLOCKSIZE for before, after in seeks), seeks


def test_plan_errors_and_store_failures_are_one_line(s3, aws_env, downloads, monkeypatch):
    with pytest.raises(CurationError, match=r"^sources\.web\.path: s3://vlm-test/nowhere: no such object or prefix"):
        _items(f"s3://{BUCKET}/nowhere")
    s3.client().put_object(Bucket=BUCKET, Key="other/notes.txt", Body=b"hello")
    with pytest.raises(CurationError, match=r"s3://vlm-test/other is not img2dataset output"):
        _items(f"s3://{BUCKET}/other")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(CurationError) as err:
        _items(f"s3://{BUCKET}/i2d/webdataset")
    line = str(err.value)
    assert "access denied" in line and "\n" not in line and "wrong-secret" not in line, line
