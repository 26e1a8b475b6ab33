"""Out-of-core MinHash-LSH near-duplicate search, kept-first in dataset order.

The signatures live in a DuckDB database file (table ``sigs(pos, grp, sig)``: a dense dataset-order
position, a group that duplicates must share, and ``num_perm`` uint64 hash values as one BLOB), so memory is
bounded by DuckDB's limit (it spills to the database's folder), not by the number of texts. The search:

1. **exact copies** (the same signature in the same group) are folded onto their first occurrence;
2. **bands**: the hash of each of ``bands`` slices of ``rows`` values, one column per band;
3. **candidates**, one task per band (the build's executor runs them: Ray tasks on a cluster): within
   each (group, band value) bucket, every sample is paired with the bucket's first ``MAX_BUCKET_PAIRS``
   earlier samples, written as parquet;
4. **verification**: each distinct candidate pair's estimated Jaccard similarity (the share of equal hash
   values) is checked against the threshold, streaming the pairs' signatures in batches;
5. **resolution**: over the verified pairs sorted by (later, earlier), a sample is a duplicate of the
   earliest earlier sample that is itself kept (greedy, as if each sample were queried against the
   samples kept before it); exact copies follow their first occurrence.

Memory in this process: 1 byte per signature (the kept flags) plus 16 bytes per duplicate found, beside
DuckDB's own limit. With buckets smaller than ``MAX_BUCKET_PAIRS`` the result equals the in-memory greedy
search over an LSH index of the kept samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from curation.dedup import search_db
from curation.dedup.search_db import Imap

# (false positive, false negative) weights when choosing bands x rows for a threshold: candidates are verified
# with the estimated Jaccard anyway, so favour recall. At threshold 0.7 and 128 permutations: 20 bands of 6 rows.
LSH_WEIGHTS = (0.1, 0.9)
MAX_BUCKET_PAIRS = 64  # a sample meets at most this many earlier samples of one bucket (exact copies are folded first)


@dataclass(frozen=True)
class Banding:
    """LSH layout: ``bands`` slices of ``rows`` hash values each (``bands * rows <= num_perm``)."""

    bands: int
    rows: int

    def check(self, num_perm: int) -> None:
        if self.bands < 1 or self.rows < 1 or self.bands * self.rows > num_perm:
            raise ValueError(f"{self.bands} bands x {self.rows} rows do not fit in {num_perm} hash values")


def _collision_area(threshold: float, bands: int, rows: int, below: bool) -> float:
    from scipy.integrate import quad

    def collides(s: float) -> float:
        return 1 - (1 - s**rows) ** bands

    if below:  # false positives: pairs under the threshold that share a band
        return quad(collides, 0.0, threshold)[0]
    return quad(lambda s: 1 - collides(s), threshold, 1.0)[0]


@lru_cache(maxsize=64)
def _best_banding(threshold: float, num_perm: int) -> Banding:
    fp_weight, fn_weight = LSH_WEIGHTS
    best, best_error = Banding(1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            error = fp_weight * _collision_area(threshold, bands, rows, True) + fn_weight * _collision_area(
                threshold, bands, rows, False
            )
            if error < best_error:
                best, best_error = Banding(bands, rows), error
    return best


def banding_for(threshold: float, num_perm: int) -> Banding:
    """The bands x rows minimising the weighted false positive and false negative areas of the LSH S-curve
    at ``threshold`` (datasketch's choice). At least 2 bands: for thresholds so high that 1 band would win
    (about 0.95 at 128 permutations), the layout of the highest threshold giving 2 — pairs are verified
    against ``threshold`` itself, so this costs only candidates."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    t = threshold
    while True:
        banding = _best_banding(t, num_perm)
        if banding.bands >= 2 or t <= 0.5:
            return banding
        t = round(t - 0.01, 2)


def band_candidates(db: Path, band: int, banding: Banding, out: Path, memory_mb: int, threads: int) -> None:
    """Write the candidate pairs ``(i, j)``, ``i < j``, of one band to ``out`` (parquet).
    A task of its own: it opens the database read-only, so bands can run in other processes or nodes."""
    con = search_db.connect(db, memory_mb, threads, read_only=True)
    try:
        column = f"b{band}"
        con.execute(
            f"""
            COPY (
                WITH m AS (
                    SELECT pos, grp, {column} AS h,
                           row_number() OVER (PARTITION BY grp, {column} ORDER BY pos) AS rn,
                           count(*) OVER (PARTITION BY grp, {column}) AS n
                    FROM bands
                ), shared AS (SELECT pos, grp, h, rn FROM m WHERE n > 1)
                SELECT a.pos AS i, b.pos AS j
                FROM (SELECT * FROM shared WHERE rn <= {MAX_BUCKET_PAIRS}) a
                JOIN shared b ON a.grp = b.grp AND a.h = b.h AND a.rn < b.rn
            ) TO {search_db.sql_path(out)} (FORMAT parquet)
            """
        )
    finally:
        con.close()


def _blobs(column: pa.Array, num_perm: int) -> np.ndarray:
    """A binary column of fixed-size signatures as an (n, num_perm) uint64 array (one copy)."""
    return np.frombuffer(b"".join(column.to_pylist()), dtype=np.uint64).reshape(-1, num_perm)


class SignatureSearch(search_db.Search):
    """One search over the ``sigs`` table of ``db`` (created by :meth:`create`, filled by the caller)."""

    TABLE = "sigs"
    COLUMNS = "pos BIGINT, grp BIGINT, sig BLOB"

    def __init__(self, db: Path, num_perm: int, memory_mb: int = 256, threads: int = 1) -> None:
        super().__init__(db, memory_mb, threads)
        self.num_perm = num_perm

    def run(self, threshold: float, banding: Banding, verify: bool = True, imap: Imap | None = None) -> np.ndarray:
        """(n, 2) int64 array of (duplicate position, position of the kept sample it duplicates), ascending."""
        banding.check(self.num_perm)
        con = search_db.connect(self.db, self.memory_mb, self.threads)
        try:
            self._fold_and_band(con, banding)
        finally:
            con.close()  # the band tasks open the database read-only
        parts = [self.db.parent / f"{self.db.stem}.band-{b:03d}.parquet" for b in range(banding.bands)]
        args = [(self.db, b, banding, parts[b], self.memory_mb, self.threads) for b in range(banding.bands)]
        search_db.run_tasks(band_candidates, args, imap, "near-duplicate band")
        con = search_db.connect(self.db, self.memory_mb, self.threads)
        try:
            self._verify(con, parts, threshold, verify)
            ((size,),) = con.execute("SELECT coalesce(max(pos) + 1, 0) FROM sigs").fetchall()
            return search_db.follow_copies(con, search_db.resolve_kept_first(con, int(size)))
        finally:
            con.close()
            for part in parts:
                part.unlink(missing_ok=True)

    def _fold_and_band(self, con: duckdb.DuckDBPyConnection, banding: Banding) -> None:
        width = banding.rows * 8
        con.execute(
            """
            CREATE OR REPLACE TABLE copies AS
            WITH keys AS (SELECT grp, hash(sig) AS h, pos, sig FROM sigs),
                 repeated AS (SELECT grp, h FROM keys GROUP BY grp, h HAVING count(*) > 1)
            SELECT pos, rep FROM (
                SELECT pos, min(pos) OVER (PARTITION BY grp, sig) AS rep FROM keys SEMI JOIN repeated USING (grp, h)
            ) WHERE pos <> rep
            """
        )
        columns = ", ".join(f"hash(sig[{b * width + 1}:{(b + 1) * width}]) AS b{b}" for b in range(banding.bands))
        con.execute(
            f"CREATE OR REPLACE TABLE bands AS SELECT pos, grp, {columns} FROM sigs ANTI JOIN copies USING (pos)"
        )

    def _verify(self, con: duckdb.DuckDBPyConnection, parts: list[Path], threshold: float, verify: bool) -> None:
        con.execute("CREATE OR REPLACE TABLE verified (i BIGINT, j BIGINT)")
        if not parts:
            return
        files = ", ".join(search_db.sql_path(p) for p in parts)
        pairs = f"SELECT DISTINCT i, j FROM read_parquet([{files}])"
        if not verify:
            con.execute(f"INSERT INTO verified {pairs}")
            return
        reader = con.sql(
            f"SELECT c.i, c.j, a.sig, b.sig FROM ({pairs}) c JOIN sigs a ON a.pos = c.i JOIN sigs b ON b.pos = c.j"
        ).to_arrow_reader(search_db.BATCH)
        writer = con.cursor()  # a second connection to the database: it inserts while the reader streams
        try:
            for batch in reader:
                equal = (_blobs(batch.column(2), self.num_perm) == _blobs(batch.column(3), self.num_perm)).sum(axis=1)
                similar = equal / self.num_perm >= threshold  # as MinHash.jaccard estimates it
                found = pa.table({"i": batch.column(0).filter(similar), "j": batch.column(1).filter(similar)})
                writer.register("found", found)
                writer.execute("INSERT INTO verified SELECT i, j FROM found")
                writer.unregister("found")
        finally:
            writer.close()
