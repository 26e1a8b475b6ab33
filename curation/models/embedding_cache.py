"""Embeddings computed before, kept by (model namespace, content sha256), so a rebuild, a resumed build or
another build over the same images asks the model for nothing again.

One SQLite file per cache directory (WAL: a build's worker processes read and write it at once). The
namespace is the model's fingerprint with the dtype and device type it ran with (fp16 on a GPU and fp32 on
CPU give different vectors; a build must not take one for the other) and the modality. Vectors are stored as
the float16 bytes the shards hold, so a vector read from the cache is bit-identical to a fresh one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from curation.cache import cache_root
from curation.errors import CurationError
from shards.atomic import content_sha256

DB_NAME = "embeddings.sqlite"
_CHUNK = 500  # SQLite's bound on query parameters is far above; chunks keep statements small


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


def cache_namespace(fingerprint: str, dtype: str, device: str, modality: str) -> str:
    return content_sha256({"model": fingerprint, "dtype": dtype, "device": device.split(":")[0], "of": modality})


class EmbeddingCache:
    def __init__(self, directory: Path, dim: int) -> None:
        self.dim = dim
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / DB_NAME
            self._con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS vectors (namespace TEXT NOT NULL, content TEXT NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (namespace, content)) WITHOUT ROWID"
            )
        except (OSError, sqlite3.DatabaseError) as exc:
            raise CurationError(f"cache_dir: cannot use the embedding cache in {directory}: {exc}") from None

    def get_many(self, namespace: str, contents: list[str]) -> dict[str, np.ndarray]:
        """The cached float16 vectors of ``contents`` (sha256 hex) that are there; a row of the wrong size
        (another model's, a damaged file) is treated as missing."""
        found: dict[str, np.ndarray] = {}
        want = self.dim * 2
        unique = sorted(set(contents))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._con.execute(
                f"SELECT content, vector FROM vectors WHERE namespace = ? AND content IN ({marks})",
                [namespace, *chunk],
            )
            for content, blob in rows:
                if isinstance(blob, bytes) and len(blob) == want:
                    found[content] = np.frombuffer(blob, dtype=np.float16)
        return found

    def put_many(self, namespace: str, items: dict[str, np.ndarray]) -> None:
        rows = [(namespace, c, np.ascontiguousarray(v, dtype=np.float16).tobytes()) for c, v in sorted(items.items())]
        self._con.execute("BEGIN IMMEDIATE")  # one transaction per batch: autocommit would sync every row
        try:
            self._con.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def close(self) -> None:
        self._con.close()
