"""Read our shards back into records, streaming (one sample in memory at a time)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from schemas import Record
from shards.codec import decode_sample
from shards.manifest import read_manifest


class TruncatedShardError(OSError):
    """The tar ended early or is corrupt; ``samples_read`` were read before the damage."""

    def __init__(self, path: Path, samples_read: int, detail: str) -> None:
        self.path = path
        self.samples_read = samples_read
        super().__init__(f"{path}: damaged tar after {samples_read} samples ({detail})")


def iter_members(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, grouping consecutive members by key (webdataset rules)."""
    path = Path(path)
    current_key: str | None = None
    members: dict[str, bytes] = {}
    count = 0
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if current_key is not None and key != current_key:
                    yield current_key, members
                    count += 1
                    members = {}
                current_key = key
                members[ext] = data
            # tarfile stops silently when the file ends exactly at a member boundary; a complete tar
            # ends with a zero block (end-of-archive marker) where iteration stopped.
            raw.seek(tar.offset)
            if raw.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TruncatedShardError(path, count, str(exc)) from None
    if current_key is not None:
        yield current_key, members


def iter_shard(path: Path) -> Iterator[Record]:
    for key, members in iter_members(path):
        yield decode_sample(key, members)


def iter_dataset(directory: Path) -> Iterator[Record]:
    """All records of a built dataset, in shard order."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for shard in manifest.shards:
        yield from iter_shard(directory / shard.name)
