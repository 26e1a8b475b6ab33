"""SpliceWriter: a file made of ranges of another file and new bytes, with its sha256, in call order."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from shards import splice
from shards.splice import SpliceWriter


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(3 * splice._CHUNK + 12345))  # several hashing chunks, not a whole one
    return path


Op = bytes | tuple[int, int]  # new bytes, or (offset, length) of the source


def _splice(tmp_path: Path, source: Path, ops: list[Op]) -> tuple[bytes, str]:
    out = tmp_path / "out.bin"
    with open(out, "wb", buffering=0) as dst, open(source, "rb") as src, SpliceWriter(dst, src) as sink:
        for op in ops:
            if isinstance(op, bytes):
                sink.write(op)
            else:
                sink.copy(*op)
        digest = sink.finish()
        size = sink.size
    data = out.read_bytes()
    assert size == len(data)
    return data, digest


OPS: list[Op] = [
    b"head",
    (0, 1000),
    (5000, splice._CHUNK + 7),  # crosses a chunk boundary
    b"",
    (17, 0),
    b"middle" * 300,
    (2 * splice._CHUNK, splice._CHUNK + 12345),  # to the very end
]


def _expected(source: Path) -> bytes:
    raw = source.read_bytes()
    return b"".join(op if isinstance(op, bytes) else raw[op[0] : op[0] + op[1]] for op in OPS)


def test_ranges_and_new_bytes_in_call_order_with_their_sha256(tmp_path: Path, source: Path) -> None:
    data, digest = _splice(tmp_path, source, OPS)
    assert data == _expected(source)
    assert digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("err", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_falls_back_to_copying_through_python_where_the_kernel_cannot(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls = []

    def refuse(*args: object) -> int:
        calls.append(args)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    data, digest = _splice(tmp_path, source, OPS)
    assert data == _expected(source) and digest == hashlib.sha256(data).hexdigest()
    assert len(calls) == 1  # tried once, then the file is copied through Python


def test_a_partial_kernel_copy_is_finished_through_python(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.copy_file_range
    state = {"calls": 0}

    def once_then_refuse(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        state["calls"] += 1
        if state["calls"] > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, min(count, 100), offset_src)

    monkeypatch.setattr(os, "copy_file_range", once_then_refuse)
    data, digest = _splice(tmp_path, source, OPS)
    assert data == _expected(source) and digest == hashlib.sha256(data).hexdigest()


def test_a_range_past_the_end_of_the_source_is_an_error(tmp_path: Path, source: Path) -> None:
    size = source.stat().st_size
    with pytest.raises(OSError, match="the source holds"):
        _splice(tmp_path, source, [(size - 10, 11)])


def test_a_real_write_error_is_not_mistaken_for_missing_kernel_support(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", disk_full, raising=False)
    with pytest.raises(OSError) as caught:
        _splice(tmp_path, source, OPS)
    assert caught.value.errno == errno.ENOSPC
