"""Read our shards back into records, streaming (one sample in memory at a time).

A tar is read as untrusted input (a ``shards`` source, ``curate inspect`` or ``export`` of a copied build):
only regular-file members are read, each only after its size is checked against a cap and against the
bytes left in the file, and every read is clamped to the file's size, so a header claiming gigabytes
never makes us allocate them. Members are grouped the webdataset way: the key is the member name up to
the first dot of its file name, and a repeated extension starts a new sample.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from schemas import Record
from shards.codec import decode_sample
from shards.manifest import read_manifest

# The writer's default shard size (``max_bytes_per_shard``): no member of a shard of ours is bigger.
MAX_MEMBER_BYTES = 1 << 30
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


class TruncatedShardError(OSError):
    """The tar ended early or is corrupt; ``samples_read`` were read before the damage."""

    def __init__(self, path: Path | str, samples_read: int, detail: str) -> None:
        self.path = path
        self.samples_read = samples_read
        super().__init__(f"{path}: damaged tar after {samples_read} samples ({detail})")


class MemberError(ValueError):
    """A member that is not read: ``reason`` is ``not_a_regular_file`` or ``member_too_large``."""

    def __init__(self, name: str, reason: str, detail: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(detail)


class ClampedFile:
    """A read-only file whose reads never ask for more than the bytes left in it: ``tarfile`` reads a PAX or
    long-name header with one ``read(size)``, and a buffered read allocates ``size`` up front.

    ``tarfile.open(fileobj=cast(BinaryIO, clamped))``: typeshed asks a fileobj for ``write``/``close`` too,
    which reading never calls."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.name = getattr(f, "name", None)
        size = getattr(f, "size", None)  # a streamed object (no file descriptor) knows its size
        self.size = size if isinstance(size, int) else os.fstat(f.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


def open_regular(path: Path) -> BinaryIO:
    """``open(path, "rb")`` refusing anything but a regular file: opening a FIFO would block forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def member_kind(info: tarfile.TarInfo) -> str | None:
    """None for a plain regular file, else what the member is (a link, device, directory, sparse file...)."""
    if info.type in _PLAIN_TYPES and info.sparse is None:
        return None
    if info.sparse is not None:
        return "sparse file"
    return _TYPE_NAMES.get(info.type, f"member of type {info.type!r}")


def check_member(info: tarfile.TarInfo, file_size: int, max_bytes: int) -> None:
    """Raise :class:`MemberError` for a member not to read, ``tarfile.ReadError`` for one running past the end
    of the file (a cut-off tar, or a lying header)."""
    kind = member_kind(info)
    if kind is not None:
        raise MemberError(info.name, "not_a_regular_file", f"member {info.name!r} is a {kind}, not a regular file")
    if info.size < 0 or info.offset_data + info.size > file_size:
        raise tarfile.ReadError(
            f"member {info.name!r} claims {info.size:,} bytes at offset {info.offset_data:,} "
            f"of a {file_size:,}-byte file"
        )
    if info.size > max_bytes:
        raise MemberError(
            info.name, "member_too_large", f"member {info.name!r} claims {info.size:,} bytes (cap {max_bytes:,})"
        )


def read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, file_size: int, max_bytes: int) -> bytes:
    """A member's bytes, once :func:`check_member` lets it be read; ``tarfile.ReadError`` when cut off."""
    check_member(info, file_size, max_bytes)
    f = tar.extractfile(info)
    data = f.read(info.size) if f is not None else b""
    if len(data) != info.size:
        raise tarfile.ReadError(f"member {info.name!r} is cut off ({len(data)} of {info.size} bytes)")
    return data


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, webdataset's way; None when its file name has no dot."""
    folder, _, base = name.rpartition("/")
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), ext


@dataclass(slots=True)
class TarSample:
    """One sample's members; ``problem`` is set when one of them was not read (the sample is incomplete)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: MemberError | None = None


def _read_into(sample: TarSample, tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str, size: int, cap: int) -> None:
    try:
        sample.members[ext] = read_member(tar, info, size, cap)
    except MemberError as exc:
        sample.problem = sample.problem or exc
        sample.members[ext] = b""  # holds the extension's place; a sample with a problem is never decoded


def iter_samples(path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[TarSample]:
    """Each sample of a tar, in order, with any member that was not read named in ``problem``.

    Raises :class:`TruncatedShardError` where the tar is damaged (cut off, a garbled header, a member past
    the end of the file, no end-of-archive marker); the sample being read then is not yielded."""
    path = Path(path)
    yield from iter_tar_samples(lambda: open_regular(path), path, max_member_bytes)


def iter_tar_samples(
    opener: Callable[[], AbstractContextManager[Any]], path: Path | str, max_member_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[TarSample]:
    """:func:`iter_samples` of the tar that ``opener()`` opens (a local file, or an object streamed from a
    bucket: anything with ``read``/``seek``/``tell`` and a ``size`` or a file descriptor); ``path`` names it
    in errors."""
    current: TarSample | None = None
    count = 0
    try:
        with (
            opener() as raw,
            tarfile.open(fileobj=cast(BinaryIO, clamped := ClampedFile(raw)), mode="r|") as tar,
        ):
            for info in tar:
                parts = split_name(info.name)
                if parts is None:
                    continue
                key, ext = parts
                if current is not None and (key != current.key or ext in current.members):
                    yield current
                    count += 1
                    current = None
                current = current or TarSample(key)
                _read_into(current, tar, info, ext, clamped.size, max_member_bytes)
            _check_end(raw, tar.offset)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TruncatedShardError(path, count, str(exc)) from None
    if current is not None:
        yield current


def _check_end(raw: BinaryIO, offset: int) -> None:
    """tarfile stops silently when the file ends at a member boundary or at a garbled header; a complete tar
    has its end-of-archive marker (a zero block) where iteration stopped."""
    raw.seek(offset)
    if raw.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("no end-of-archive marker")


def iter_members(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample. A sample with a member that cannot be read (a link, a device,
    one over :data:`MAX_MEMBER_BYTES`) is damage: :class:`TruncatedShardError`, like a cut-off tar."""
    for count, sample in enumerate(iter_samples(path)):
        if sample.problem is not None:
            raise TruncatedShardError(Path(path), count, str(sample.problem))
        yield sample.key, sample.members


def iter_shard(path: Path) -> Iterator[Record]:
    for key, members in iter_members(path):
        yield decode_sample(key, members)


def iter_dataset(directory: Path) -> Iterator[Record]:
    """All records of a built dataset, in shard order."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for shard in manifest.shards:
        yield from iter_shard(directory / shard.name)
