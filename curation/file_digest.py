"""The content identity of input files: size and sha256, hashed once per file version.

A build identifies its inputs by what they hold, not where they are, so moved or copied inputs are the same
inputs. Hashing a large input takes a while (about 1 GB/s), so digests are kept in a small SQLite table keyed
by the file's path, device, inode, size and modification time: a file hashes again only when one of those
changes (a copy to another machine hashes once there).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

from curation.cache import cache_root

DB_NAME = "file-sha256.sqlite"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a regular file's bytes (cached by its stat; see the module docstring)."""
    info = os.stat(path)
    key = (str(Path(path).resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    db = _open()
    if db is not None:
        with contextlib.closing(db):
            row = db.execute(
                "SELECT sha256 FROM digests WHERE path=? AND dev=? AND ino=? AND size=? AND mtime_ns=?", key
            ).fetchone()
            if row is not None:
                return str(row[0])
            digest = _hash(path)
            with contextlib.suppress(sqlite3.Error), db:  # a read-only or busy cache only costs a rehash
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", (*key, digest))
            return digest
    return _hash(path)


def file_identity(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a regular file."""
    return os.stat(path).st_size, file_sha256(path)


def _hash(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open() -> sqlite3.Connection | None:
    """The digest table, or None when the cache cannot be written (digests are then computed every time)."""
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(root / DB_NAME, timeout=30)
        db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, "
            "sha256 TEXT, PRIMARY KEY (path, dev, ino))"
        )
        return db
    except (OSError, sqlite3.Error):
        return None
