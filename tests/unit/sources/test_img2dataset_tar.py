"""The img2dataset reader's tar of a webdataset download is read lazily: a row's member is looked for from where the
last look stopped, so a tar in parquet order is read once, forward; any other order still gives every image, and a
damaged or short tar gives the drops it gave when every header was indexed first."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from curation.sources import img2dataset_output
from curation.sources.img2dataset_output import _NoImage, _TarImages
from tests.img2dataset_data import CountedFile

KEYS = [f"{i:09d}" for i in range(12)]


def _image(i: int) -> bytes:
    return bytes([i]) * (100 + 206 * i)  # some sizes end on a block boundary, most do not (512 * 2 at i = 4)


def _write(path: Path, keys: list[str]) -> None:
    """A tar the way img2dataset writes one: KEY.jpg, KEY.txt, KEY.json per success."""
    with tarfile.open(path, "w") as tar:
        for key in keys:
            i = int(key)
            for ext, data in (("jpg", _image(i)), ("txt", b"caption"), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def counted(monkeypatch) -> dict:
    log: dict = {"read": 0, "seeks": []}
    monkeypatch.setattr(img2dataset_output, "open_regular", lambda path: CountedFile(path, log))
    return log


def test_a_tar_in_parquet_order_is_read_once_forward(tmp_path, counted):
    _write(tmp_path / "00000.tar", KEYS)
    size = (tmp_path / "00000.tar").stat().st_size
    with _TarImages(tmp_path / "00000.tar", "00000.tar", set(KEYS)) as images:
        assert [images.get(k, {}) for k in KEYS] == [_image(int(k)) for k in KEYS]
        with pytest.raises(_NoImage) as err:  # a success the tar lacks: the scan reaches the end, cleanly
            images.get("999999999", {})
    assert err.value.reason == "download_missing"
    # every byte at most once (the txt and json members are skipped, never read), plus the end-of-archive check
    assert counted["read"] <= size + tarfile.BLOCKSIZE
    assert all(after >= before - tarfile.BLOCKSIZE for before, after in counted["seeks"]), counted["seeks"]


def test_a_tar_in_another_order_still_gives_every_image(tmp_path, counted):
    _write(tmp_path / "00000.tar", list(reversed(KEYS)))
    with _TarImages(tmp_path / "00000.tar", "00000.tar", set(KEYS)) as images:
        assert [images.get(k, {}) for k in KEYS] == [_image(int(k)) for k in KEYS]
        assert images.get(KEYS[3], {}) == _image(3)  # asked for again: still there
    assert any(after < before - tarfile.BLOCKSIZE for before, after in counted["seeks"])  # it went back for them


def test_a_cut_off_tar_gives_every_image_before_the_damage(tmp_path):
    _write(tmp_path / "00000.tar", KEYS)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        cut = next(m for m in tar.getmembers() if m.name == f"{KEYS[7]}.jpg")
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: cut.offset_data + 50])  # inside the 8th image
    with _TarImages(tmp_path / "00000.tar", "00000.tar", set(KEYS)) as images:
        outcomes = []
        for k in [KEYS[9], *KEYS]:  # a key beyond the damage first: the scan stops there, the rest still reads
            try:
                outcomes.append(images.get(k, {}) == _image(int(k)))
            except _NoImage as exc:
                outcomes.append(exc.reason)
    assert outcomes == ["shard_damaged", *[True] * 7, *["shard_damaged"] * 5]


def test_a_missing_tar_is_download_missing(tmp_path):
    with _TarImages(tmp_path / "00000.tar", "00000.tar", set(KEYS)) as images, pytest.raises(_NoImage) as err:
        images.get(KEYS[0], {})
    assert (err.value.reason, err.value.detail) == ("download_missing", "00000.tar is missing")
