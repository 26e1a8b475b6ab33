"""Out-of-core near-duplicate image search: multi-index hashing (see :mod:`curation.dedup.index`) over a
DuckDB database, kept-first in dataset order.

The table ``hashes(pos, grp, h, rest)`` holds per sample its first image's 64-bit hash ``h`` (signed, as the
sidecars store it: the bits are what count), the hashes of its other images ``rest``, and a group ``grp`` that
duplicates share (the scope's group and the image count). Exact copies are folded first; then one task per
hash chunk joins each sample's chunk value, and every value within the layout's radius of it, with the
samples holding that value, and keeps the pairs whose every image is within ``max_distance`` bits. By
pigeonhole every such pair is found in some chunk: the search is exact. The chunk count is chosen for the
number of samples (:func:`chunk_layout`): many narrow chunks meet many unrelated hashes per bucket (the
work grows as N^2 / 2^width), few wide ones need many probes per sample. Kept-first resolution:
:mod:`curation.dedup.search_db`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np

from curation.dedup import search_db
from curation.dedup.hashing import HASH_BITS, to_signed
from curation.dedup.search_db import Imap


@dataclass(frozen=True)
class ChunkLayout:
    """The hash split into ``len(chunks)`` chunks of (shift, mask); a pair within ``max_distance`` bits is
    within ``radius = max_distance // len(chunks)`` bits in at least one chunk (pigeonhole), so each sample
    probes, per chunk, every value within ``radius`` bits of its own."""

    max_distance: int
    chunks: tuple[tuple[int, int], ...]

    @property
    def radius(self) -> int:
        return self.max_distance // len(self.chunks)

    def flips(self, chunk: int) -> list[int]:
        """The xor masks of weight <= radius within one chunk's width."""
        width = self.chunks[chunk][1].bit_length()
        return [sum(1 << b for b in bits) for k in range(self.radius + 1) for bits in combinations(range(width), k)]


def split(count: int) -> tuple[tuple[int, int], ...]:
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    return tuple((sum(widths[i + 1 :]), (1 << w) - 1) for i, w in enumerate(widths))


def chunk_layout(max_distance: int, samples: int) -> ChunkLayout:
    """The chunk count with the least expected work for ``samples`` hashes: probes (samples x chunks x masks)
    plus the unrelated hashes they meet (probes x samples / 2^width). ``max_distance + 1`` chunks of radius 0
    is the classic layout; fewer, wider chunks with a small radius win as the number of samples grows."""
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}), got {max_distance}")
    best: ChunkLayout | None = None
    best_cost = float("inf")
    for count in range(1, max_distance + 2):
        layout = ChunkLayout(max_distance, split(count))
        width = HASH_BITS // count
        masks = sum(comb(width, k) for k in range(layout.radius + 1))
        if masks > 4096:  # too many probe rows per sample
            continue
        probes = samples * count * masks
        cost = probes + probes * samples / 2.0**width
        if cost < best_cost:
            best, best_cost = layout, cost
    assert best is not None  # max_distance + 1 chunks of radius 0 always qualify
    return best


def chunk_candidates(db: Path, chunk: int, layout: ChunkLayout, out: Path, memory_mb: int, threads: int) -> None:
    """Write the pairs ``(i, j)``, ``i < j``, within ``layout.radius`` bits in one chunk and within
    ``max_distance`` bits in every image, to ``out`` (parquet). A task of its own: the
    database is opened read-only."""
    shift, mask = layout.chunks[chunk]
    d = int(layout.max_distance)
    con = search_db.connect(db, memory_mb, threads, read_only=True)
    try:
        # as signed 64-bit values, like the hashes: a 64-bit chunk's mask and top bit are negative numbers
        flips = [to_signed(f) for f in layout.flips(chunk)]
        con.execute("CREATE TEMP TABLE flips AS SELECT unnest(?::BIGINT[]) AS flip", [flips])
        con.execute(
            f"""
            COPY (
                WITH c AS (
                    SELECT pos, grp, h, rest, (h >> {shift}) & {to_signed(mask)} AS v
                    FROM hashes ANTI JOIN copies USING (pos)
                ), probe AS (SELECT c.*, xor(c.v, f.flip) AS near FROM c, flips f)
                SELECT a.pos AS i, b.pos AS j
                FROM probe a JOIN c b ON a.grp = b.grp AND b.v = a.near AND a.pos < b.pos
                WHERE bit_count(xor(a.h, b.h)) <= {d}
                  AND (len(a.rest) = 0 OR list_bool_and(list_transform(
                        list_zip(a.rest, b.rest), lambda x: bit_count(xor(x[1], x[2])) <= {d})))
            ) TO {search_db.sql_path(out)} (FORMAT parquet)
            """
        )
    finally:
        con.close()


class HashSearch(search_db.Search):
    """One search over the ``hashes`` table of ``db`` (created by :meth:`create`, filled by the caller)."""

    TABLE = "hashes"
    COLUMNS = "pos BIGINT, grp BIGINT, h BIGINT, rest BIGINT[]"

    def run(self, max_distance: int, imap: Imap | None = None, chunk_count: int | None = None) -> np.ndarray:
        """(n, 2) int64 array of (duplicate position, position of the kept sample it duplicates), ascending.
        ``chunk_count`` overrides the layout :func:`chunk_layout` picks (the result is the same)."""
        con = search_db.connect(self.db, self.memory_mb, self.threads)
        try:
            ((samples,),) = con.execute("SELECT count(*) FROM hashes").fetchall()
            layout = chunk_layout(max_distance, max(1, int(samples)))
            if chunk_count is not None:
                layout = ChunkLayout(max_distance, split(chunk_count))
            con.execute(
                """
                CREATE OR REPLACE TABLE copies AS
                SELECT pos, rep FROM (SELECT pos, min(pos) OVER (PARTITION BY grp, h, rest) AS rep FROM hashes)
                WHERE pos <> rep
                """
            )
        finally:
            con.close()  # the chunk tasks open the database read-only
        count = len(layout.chunks)
        parts = [self.db.parent / f"{self.db.stem}.chunk-{c:02d}.parquet" for c in range(count)]
        args = [(self.db, c, layout, parts[c], self.memory_mb, self.threads) for c in range(count)]
        try:
            search_db.run_tasks(chunk_candidates, args, imap, "near-duplicate image chunk")
            con = search_db.connect(self.db, self.memory_mb, self.threads)
            try:
                files = ", ".join(search_db.sql_path(p) for p in parts)
                con.execute(f"CREATE OR REPLACE TABLE verified AS SELECT DISTINCT i, j FROM read_parquet([{files}])")
                ((size,),) = con.execute("SELECT coalesce(max(pos) + 1, 0) FROM hashes").fetchall()
                return search_db.follow_copies(con, search_db.resolve_kept_first(con, int(size)))
            finally:
                con.close()
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
