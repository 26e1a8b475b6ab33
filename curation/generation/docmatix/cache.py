"""Generations persist as they complete, keyed by what produced them, so a rerun never generates twice.

One SQLite file per cache directory (WAL mode: the build's worker processes write to it concurrently).
The key is the sha256 of (engine identity, sampling, messages, JSON schema, and the images' sha256 when a
request has images): a rerun with the same recipe and engine finds every finished generation, whatever the
partitioning; another engine or prompt misses.
Failures are not stored (a rebuild retries them). What is stored is the reply after the step's repairs
(``curation.generation.docmatix.untrusted``) with their names, so a rerun reads exactly what the first run used.
"""

from __future__ import annotations

import hashlib
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Any

from curation.cache import cache_root
from curation.errors import CurationError
from curation.generation.engines import ChatRequest, Generation
from shards.atomic import content_sha256

DB_NAME = "generations.sqlite"


def default_cache_dir(name: str = "docmatix") -> Path:
    """``$VLM_CURATION_CACHE/<name>``, or ``~/.cache/vlm-curation/<name>``."""
    return cache_root() / name


@lru_cache(maxsize=64)  # an image goes with every turn and criterion of its sample: hashed once
def image_digest(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def request_key(engine_identity: dict[str, Any], request: ChatRequest) -> str:
    """The cache key of ``request``. Images (their sha256, in order) enter the key only when there are some:
    the keys of text-only requests are those of caches written before requests had images."""
    parts: dict[str, Any] = {
        "engine": engine_identity,
        "messages": [list(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "json_schema": request.json_schema,
    }
    if request.images:
        parts["images"] = [image_digest(image) for image in request.images]
    return content_sha256(parts)


class GenerationCache:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:  # e.g. a file that is no SQLite database (cut short, overwritten)
            self._con.close()
            raise CurationError(f"cache_dir: cannot use the generation cache {self.path}: {exc}") from None

    def _open(self) -> None:
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, finish_reason TEXT NOT NULL, "
            "repairs TEXT NOT NULL DEFAULT '')"
        )
        self._add_repairs_column()

    def _add_repairs_column(self) -> None:
        """Caches written before repairs were recorded lack the column (their rows get '': none recorded)."""
        columns = {row[1] for row in self._con.execute("PRAGMA table_info(generations)")}
        if "repairs" in columns:
            return
        try:
            self._con.execute("ALTER TABLE generations ADD COLUMN repairs TEXT NOT NULL DEFAULT ''")
        except sqlite3.OperationalError as exc:  # another worker added it first
            if "duplicate column" not in str(exc):
                raise

    def get_many(self, keys: list[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = (
                "SELECT key, text, prompt_tokens, completion_tokens, finish_reason, repairs FROM generations "
                f"WHERE key IN ({marks})"
            )
            for key, text, p, c, f, r in self._con.execute(query, chunk):
                found[key] = Generation(text, p, c, f, tuple(r.split(",")) if r else ())
        return found

    def put_many(self, items: list[tuple[str, Generation]]) -> None:
        """Store finished generations durably (one transaction)."""
        if not items:
            return
        with self._con:
            self._con.execute("BEGIN IMMEDIATE")
            self._con.executemany(
                "INSERT OR REPLACE INTO generations "
                "(key, text, prompt_tokens, completion_tokens, finish_reason, repairs) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (k, g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason, ",".join(g.repairs))
                    for k, g in items
                ],
            )

    def __len__(self) -> int:
        return int(self._con.execute("SELECT count(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        self._con.close()
