"""Our tar writer produces exactly what ``tarfile`` produces for the same members and metadata."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from shards.tarstream import TarStream, fast_header, tarfile_header


@pytest.mark.parametrize("name", ["a.jpg", "k-000001.images.mp", "x" * 99, "x" * 100, "y" * 150 + ".json"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 50_000, 123_456_789])
def test_fast_header_equals_tarfile_header(name, size):
    assert fast_header(name, size) == tarfile_header(name, size)


def test_archive_is_byte_identical_to_tarfile():
    rng = random.Random(0)
    members = [(f"k{i:04d}.{ext}", rng.randbytes(rng.randint(0, 3000))) for i in range(60) for ext in ("json", "txt")]
    ours = io.BytesIO()
    stream = TarStream(ours)
    for name, data in members:
        stream.add(name, data)
    stream.close()
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "", ""
            tf.addfile(ti, io.BytesIO(data))
    assert ours.getvalue() == theirs.getvalue()
    assert stream.size == len(ours.getvalue()) and stream.size % tarfile.RECORDSIZE == 0


def test_members_are_sorted_and_read_back():
    buf = io.BytesIO()
    stream = TarStream(buf)
    assert stream.add_sample("k1", {"txt": b"hi", "jpg": b"\xff\xd8\xff", "json": b"{}"}) == 7
    stream.close()
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == ["k1.jpg", "k1.json", "k1.txt"]
        assert all(i.mtime == 0 and i.mode == 0o444 and i.uid == 0 and not i.pax_headers for i in infos)
        assert tf.extractfile("k1.txt").read() == b"hi"
