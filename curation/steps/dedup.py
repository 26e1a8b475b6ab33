"""Global exact image dedup over the staged sidecars (DuckDB): a sample whose image set (sha256 of
every image) equals that of an earlier sample in dataset order is dropped as ``duplicate_image``.
Text-only samples are never dropped by it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import duckdb


def find_exact_image_duplicates(sidecars: list[tuple[int, int, Path]]) -> dict[tuple[int, int], dict[str, str]]:
    """``sidecars``: (partition id, shard number, parquet path) in dataset order.

    Returns {(partition, shard): {key: source}} of the samples to drop.
    """
    if not sidecars:
        return {}
    con = duckdb.connect()
    con.execute("CREATE TABLE files (gid INTEGER, shard INTEGER, path VARCHAR)")
    con.executemany("INSERT INTO files VALUES (?, ?, ?)", [(g, s, str(p)) for g, s, p in sidecars])
    paths = [str(p) for _, _, p in sidecars]
    rows = con.execute(
        """
        WITH rows AS (
            SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source,
                   array_to_string(list_sort(r.image_sha256), ',') AS sig
            FROM read_parquet(?, filename = true) r JOIN files f ON r.filename = f.path
            WHERE r.n_images > 0
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY sig ORDER BY gid, shard, idx) AS rank FROM rows
        )
        SELECT gid, shard, key, source FROM ranked WHERE rank > 1 ORDER BY gid, shard, idx
        """,
        [paths],
    ).fetchall()
    con.close()
    out: dict[tuple[int, int], dict[str, str]] = defaultdict(dict)
    for gid, shard, key, source in rows:
        out[(gid, shard)][key] = source
    return dict(out)
