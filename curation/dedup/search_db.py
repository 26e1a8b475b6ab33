"""What the out-of-core near-duplicate searches share: a DuckDB database file that spills beside itself,
candidate tasks that may run on other processes or nodes, and the kept-first resolution.

Both searches (MinHash texts in :mod:`curation.dedup.lsh`, perceptual image hashes in
:mod:`curation.dedup.image_search`) fill two tables and leave the rest here:

- ``copies(pos, rep)``: exact copies folded onto their first occurrence ``rep`` before the search;
- ``verified(i, j)``, ``i < j``: the pairs that are near duplicates of each other.

:func:`resolve_kept_first` then walks ``verified`` by (j, i): a sample is a duplicate of the earliest
earlier sample that is itself kept, as if each sample were compared with the samples kept before it. Its
memory is 1 byte per position plus 16 bytes per duplicate found.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa

Imap = Callable[[Callable[..., Any], list[tuple], Callable[[tuple], str]], Iterator[Any]]
BATCH = 8192


def connect(db: Path, memory_mb: int, threads: int, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to a search database, spilling to ``<db>.spill`` beyond ``memory_mb``."""
    con = duckdb.connect(str(db), read_only=read_only)
    con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
    con.execute(f"SET threads = {max(1, int(threads))}")
    con.execute("SET temp_directory = ?", [str(db.parent / f"{db.stem}.spill")])
    con.execute("SET preserve_insertion_order = false")
    return con


def create(db: Path, memory_mb: int, threads: int) -> duckdb.DuckDBPyConnection:
    """A fresh, empty search database (what a killed earlier attempt left is removed)."""
    db.unlink(missing_ok=True)
    Path(f"{db}.wal").unlink(missing_ok=True)
    shutil.rmtree(db.parent / f"{db.stem}.spill", ignore_errors=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    return connect(db, memory_mb, threads)


def sql_path(path: Path) -> str:
    """A path as a quoted SQL string literal (COPY ... TO takes no parameter)."""
    return "'" + str(path).replace("'", "''") + "'"


def run_tasks(fn: Callable[..., Any], args: list[tuple], imap: Imap | None, what: str) -> list[Any]:
    """``fn(*a)`` for each of ``args``: on the executor's workers when ``imap`` is given, else here."""
    if imap is None:
        return [fn(*a) for a in args]
    return list(imap(fn, args, lambda a: f"{what} {a[1]}"))


def resolve_kept_first(con: duckdb.DuckDBPyConnection, size: int) -> np.ndarray:
    """(n, 2) int64 (duplicate, kept sample it duplicates) from ``verified``, by duplicate ascending."""
    kept = np.ones(size, dtype=bool)
    found: list[tuple[int, int]] = []
    decided = -1
    for batch in con.sql("SELECT i, j FROM verified ORDER BY j, i").to_arrow_reader(BATCH):
        for i, j in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            if j != decided and kept[i]:  # the earliest kept sample j is similar to
                kept[j] = False
                found.append((j, i))
                decided = j
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def follow_copies(con: duckdb.DuckDBPyConnection, unique: np.ndarray) -> np.ndarray:
    """``unique`` plus the exact copies from ``copies``: a copy duplicates what its first occurrence
    duplicated when that one was dropped, else the first occurrence itself. Sorted by duplicate."""
    copies = con.sql("SELECT pos, rep FROM copies ORDER BY pos").to_arrow_table()
    pos = copies.column("pos").to_numpy()
    rep = copies.column("rep").to_numpy()
    at = np.searchsorted(unique[:, 0], rep)
    hit = at < len(unique)
    hit[hit] = unique[at[hit], 0] == rep[hit]
    target = rep.copy()
    target[hit] = unique[at[hit], 1]
    every = np.concatenate([unique, np.stack([pos, target], axis=1)])
    return every[np.argsort(every[:, 0], kind="stable")]


class Search:
    """A search over one table of a database file: ``TABLE`` names it, ``COLUMNS`` declares them (``pos``
    first)."""

    TABLE: ClassVar[str]
    COLUMNS: ClassVar[str]

    def __init__(self, db: Path, memory_mb: int = 256, threads: int = 1) -> None:
        self.db = db
        self.memory_mb = memory_mb
        self.threads = threads

    @classmethod
    def create(cls, db: Path, memory_mb: int, threads: int) -> duckdb.DuckDBPyConnection:
        """A fresh database with the empty table to fill (positions dense from 0, in dataset order)."""
        con = create(db, memory_mb, threads)
        con.execute(f"CREATE TABLE {cls.TABLE} ({cls.COLUMNS})")
        return con


def search_rows(search: type[Search], rows: pa.Table, run: Callable[[Path], np.ndarray]) -> np.ndarray:
    """``run`` over a temporary database holding ``rows`` (the table's columns, in order): for tests and small
    inputs held in memory; builds fill the table from their staged files instead."""
    with tempfile.TemporaryDirectory(prefix="near-dup-") as tmp:
        db = Path(tmp) / "search.duckdb"
        con = search.create(db, memory_mb=256, threads=1)
        con.register("rows", rows)
        con.execute(f"INSERT INTO {search.TABLE} SELECT * FROM rows")
        con.close()
        return run(db)


def group_codes(keys: list[Hashable]) -> list[int]:
    """Each key's number, in order of first appearance."""
    codes: dict[Hashable, int] = {}
    return [codes.setdefault(k, len(codes)) for k in keys]


def matches(found: np.ndarray, positions: list[int], count: int) -> list[int]:
    """Per item of ``count``: -1, or the item it duplicates, from (duplicate, kept) pairs over ``positions``."""
    result = [-1] * count
    for later, earlier in found.tolist():
        result[positions[later]] = positions[earlier]
    return result
