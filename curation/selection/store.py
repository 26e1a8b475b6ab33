"""The trial store: one SQLite row per trial (status, attempts, result, error, log, timings).

WAL mode and a busy timeout make it safe to read and write from several processes (a sweep and a
``curate`` command looking at it, or two sweeps sharing trials). Every write is one autocommitted
statement, so a killed sweep leaves the store consistent: at worst some rows say ``running``, and
:meth:`TrialStore.reset_running` turns them back into ``pending`` on resume.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["pending", "running", "ok", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'ok', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    log TEXT,
    started REAL,
    finished REAL,
    seconds REAL
)
"""
_COLUMNS = "id, status, attempts, result, error, log, started, finished, seconds"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored. ``attempts`` counts failed attempts; ``seconds`` is the last attempt's run time."""

    id: str
    status: Status
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    log: Path | None
    started: float | None
    finished: float | None
    seconds: float | None


def _record(row: tuple[Any, ...]) -> TrialRecord:
    id_, status, attempts, result, error, log, started, finished, seconds = row
    return TrialRecord(
        id=id_,
        status=status,
        attempts=attempts,
        result=None if result is None else json.loads(result),
        error=error,
        log=None if log is None else Path(log),
        started=started,
        finished=finished,
        seconds=seconds,
    )


class TrialStore:
    """Trials of one sweep in ``path`` (an SQLite file, created with its table when missing)."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -----------------------------------------------------------------------------------
    def get(self, id: str) -> TrialRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM trials WHERE id = ?", (id,)).fetchone()
        return None if row is None else _record(row)

    def all(self) -> list[TrialRecord]:
        return [_record(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM trials ORDER BY id")]

    # ---- writing -----------------------------------------------------------------------------------
    def add_pending(self, ids: list[str]) -> None:
        """Insert ``pending`` rows for trials not in the store yet (known ones are left alone)."""
        self._db.executemany("INSERT OR IGNORE INTO trials (id, status) VALUES (?, 'pending')", [(i,) for i in ids])

    def mark_running(self, id: str, log: Path | str) -> None:
        self._db.execute(
            "INSERT INTO trials (id, status, log, started) VALUES (?, 'running', ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'running', log = excluded.log, started = excluded.started, "
            "finished = NULL, seconds = NULL",
            (id, str(log), time.time()),
        )

    def mark_ok(self, id: str, result: dict[str, Any], seconds: float) -> None:
        self._db.execute(
            "INSERT INTO trials (id, status, result, finished, seconds) VALUES (?, 'ok', ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'ok', result = excluded.result, error = NULL, "
            "finished = excluded.finished, seconds = excluded.seconds",
            (id, json.dumps(result, sort_keys=True), time.time(), seconds),
        )

    def mark_failed(self, id: str, error: str, seconds: float) -> None:
        """Record a failed attempt (``attempts`` + 1); the result of an earlier success is dropped."""
        self._db.execute(
            "INSERT INTO trials (id, status, attempts, error, finished, seconds) VALUES (?, 'failed', 1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = 'failed', attempts = attempts + 1, result = NULL, "
            "error = excluded.error, finished = excluded.finished, seconds = excluded.seconds",
            (id, error, time.time(), seconds),
        )

    def reset_running(self) -> int:
        """Rows left ``running`` by a killed sweep become ``pending`` (attempts unchanged); returns how many."""
        return self._db.execute("UPDATE trials SET status = 'pending' WHERE status = 'running'").rowcount
