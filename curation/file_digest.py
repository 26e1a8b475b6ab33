"""The content identity of input files: size and sha256, hashed once per file version.

A build identifies its inputs by what they hold, not where they are, so moved or copied inputs are the same
inputs. Hashing a large input takes a while (about 1 GB/s), so the digests of large files are kept in a small
SQLite table keyed by the file's path, device, inode, size and modification time: a file hashes again only when
one of those changes (a copy to another machine hashes once there). Small files are hashed again (cheaper than
the table), and every digest is memoized per process. A cache that cannot be used only costs a rehash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from curation.cache import cache_root

DB_NAME = "file-sha256.sqlite"
CACHED_FROM_BYTES = 1 << 20  # smaller files hash faster than a lookup
HASH_THREADS = 4  # hashing reads files; hashlib lets go of the GIL
_CHUNK = 500  # rows per SQLite statement (its bound on parameters is far above)

StatKey = tuple[str, int, int, int, int]  # path, device, inode, size, mtime_ns
_memo: dict[StatKey, str] = {}
_lock = threading.Lock()


def file_identities(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[int, str]]:
    """(size, sha256) of each regular file, in order: memoized, then looked up (one connection, batched), and
    the rest hashed in parallel and recorded in one transaction."""
    keys = [_stat_key(p) for p in paths]
    with _lock:
        found = {k: _memo[k] for k in keys if k in _memo}
    missing = [k for k in dict.fromkeys(keys) if k not in found]
    large = [k for k in missing if k[3] >= CACHED_FROM_BYTES]
    db = _open() if large else None
    with contextlib.closing(db) if db is not None else contextlib.nullcontext():
        if db is not None:
            found.update(_lookup(db, large))
        todo = [k for k in missing if k not in found]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            hashed = dict(zip(todo, pool.map(lambda k: _hash(k[0]), todo), strict=True))
        found.update(hashed)
        if db is not None:
            _record(db, [(k, d) for k, d in hashed.items() if k[3] >= CACHED_FROM_BYTES])
    with _lock:
        _memo.update(found)
    return [(k[3], found[k]) for k in keys]


def file_identity(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a regular file."""
    return file_identities([path])[0]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a regular file's bytes (see the module docstring)."""
    return file_identity(path)[1]


def _stat_key(path: str | os.PathLike[str]) -> StatKey:
    info = os.stat(path)
    return str(Path(path).resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open() -> sqlite3.Connection | None:
    """The digest table, or None when the cache cannot be used."""
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(root / DB_NAME, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer (worker processes, other builds)
        db.execute("PRAGMA synchronous=NORMAL")  # a lost row after a power cut only costs a rehash
        db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, "
            "sha256 TEXT, PRIMARY KEY (path, dev, ino))"
        )
        return db
    except (OSError, sqlite3.Error):
        return None


def _lookup(db: sqlite3.Connection, keys: list[StatKey]) -> dict[StatKey, str]:
    found: dict[StatKey, str] = {}
    wanted = set(keys)
    with contextlib.suppress(sqlite3.Error):  # a locked or damaged table: the files are hashed instead
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT path, dev, ino, size, mtime_ns, sha256 FROM digests WHERE path IN ({marks})",
                [k[0] for k in chunk],
            ).fetchall()
            for path, dev, ino, size, mtime_ns, digest in rows:
                key = (path, dev, ino, size, mtime_ns)
                if key in wanted:
                    found[key] = str(digest)
    return found


def _record(db: sqlite3.Connection, rows: list[tuple[StatKey, str]]) -> None:
    if not rows:
        return
    with contextlib.suppress(sqlite3.Error), db:  # one transaction; a read-only or busy cache only costs a rehash
        db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", [(*k, d) for k, d in rows])
