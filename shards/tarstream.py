"""A minimal deterministic tar writer: ustar headers with fixed metadata (mtime 0, uid/gid 0, mode 0444,
no user names), members in the order given, end-of-archive blocks and padding as ``tarfile`` writes them.

Why not ``webdataset.TarWriter``: it stamps a float mtime (so ``tarfile`` adds a PAX header to every
member), streams through ``tarfile``'s ``w|`` mode buffers, and importing webdataset imports torch.
Headers here are filled into a precomputed template (a few µs instead of ``TarInfo.tobuf``'s ~13 µs);
names of 100 bytes or more fall back to ``tarfile``'s PAX encoding. ``tests/unit/shards/test_tarstream.py``
checks the headers are byte-identical to ``tarfile``'s.
"""

from __future__ import annotations

import tarfile
from typing import Protocol

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 20 blocks
MODE = 0o444


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, MODE, 0, 0, "", ""
    return ti


def tarfile_header(name: str, size: int) -> bytes:
    """The header ``tarfile`` writes for this member (the reference, and the long-name fallback)."""
    return _tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = bytearray(tarfile_header("x", 0))
_TEMPLATE[0:100] = bytes(100)  # name
_TEMPLATE[124:136] = bytes(12)  # size
_TEMPLATE[148:156] = b" " * 8  # checksum is computed with this field as spaces
_BASE_SUM = sum(_TEMPLATE)
_ZERO_SIZE_FIELD = sum(b"%011o\0" % 0)


def fast_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) >= 100 or not raw.isascii() or size >= 8**11:
        return tarfile_header(name, size)
    size_field = b"%011o\0" % size
    h = bytearray(_TEMPLATE)
    h[0 : len(raw)] = raw
    h[124:136] = size_field
    h[148:156] = b"%06o\0 " % (_BASE_SUM + sum(raw) + sum(size_field))
    return bytes(h)


class Writable(Protocol):
    """What a TarStream writes to: a binary file, or a wrapper such as ``shards.atomic.HashingWriter``."""

    def write(self, data: bytes, /) -> object: ...


class TarStream:
    """Append-only tar writer over a binary file object; ``size`` counts bytes written."""

    def __init__(self, f: Writable) -> None:
        self._f = f
        self.size = 0

    def add(self, name: str, data: bytes) -> None:
        pad = -len(data) % BLOCK
        header = fast_header(name, len(data))  # one block, or more for a PAX long-name header
        self._f.write(header)
        self._f.write(data)
        if pad:
            self._f.write(bytes(pad))
        self.size += len(header) + len(data) + pad

    def add_sample(self, key: str, members: dict[str, bytes]) -> int:
        """Write ``KEY.ext`` members in sorted extension order (the webdataset convention); payload bytes."""
        total = 0
        for ext in sorted(members):
            data = members[ext]
            self.add(f"{key}.{ext}", data)
            total += len(data)
        return total

    def close(self) -> None:
        """Two zero blocks, then zero padding to a whole record, exactly as ``tarfile`` ends an archive."""
        end = bytes(2 * BLOCK)
        self.size += len(end)
        tail = -self.size % RECORD
        self._f.write(end + bytes(tail))
        self.size += tail
