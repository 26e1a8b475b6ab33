"""Atomic file writes: write to a hidden temporary name in the same directory, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a target that is a directory, a kill: leave nothing half-written
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, UTF-8 kept as is."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def content_sha256(obj: Any) -> str:
    """sha256 of an object's canonical JSON: the identity of recipes, plans and caches."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8", "surrogatepass")).hexdigest()


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=indent) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


class HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def sha256_file(path: Path, chunk: int = 1 << 20, fsync: bool = False) -> str:
    """sha256 of a file; with ``fsync``, also flush it to disk (before an atomic rename)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk (before an atomic rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_tmp(directory: Path) -> int:
    """Delete temporary files left by a killed writer; returns how many were removed."""
    n = 0
    if directory.is_dir():
        for p in directory.glob(f".*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
    return n
