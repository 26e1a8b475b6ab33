"""Global steps over the staged sidecars (DuckDB), in dataset order (partition, shard, index):

- ``unique_key`` (always on): a sample whose key appeared earlier in the dataset is dropped as
  ``duplicate_key`` (keys must be unique for webdataset, wids and datasets).
- ``exact_image_dedup``: a sample whose image set (sha256 of every image) equals that of an earlier
  sample is dropped as ``duplicate_image``; text-only samples are never dropped by it.

Samples dropped by an earlier global step are not seen by later ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import duckdb

from curation.recipe.steps import ExactImageDedupStep
from curation.steps.contract import GlobalContext, GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep

if TYPE_CHECKING:
    from curation.build.messages import SidecarRef


Sidecars = list["SidecarRef"]  # (partition id, shard number, staged sidecar), in dataset order

_ROWS = """
    SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source, r.origin, r.n_images,
           array_to_string(list_sort(r.image_sha256), ',') AS sig
    FROM read_parquet(?, filename = true) r JOIN files f ON r.filename = f.path
    ANTI JOIN gone g ON g.gid = f.gid AND g.shard = f.shard AND g.key = r.key
"""
_QUERIES = {
    "duplicate_key": f"""
        WITH rows AS ({_ROWS}), ranked AS (
            SELECT *, row_number() OVER w AS rank, first_value(origin) OVER w AS first_origin,
                   first_value(source) OVER w AS first_source
            FROM rows WINDOW w AS (PARTITION BY key ORDER BY gid, shard, idx)
        )
        SELECT gid, shard, key, source, 'key also used by ' || first_origin, first_source
        FROM ranked WHERE rank > 1 ORDER BY gid, shard, idx
    """,
    "duplicate_image": f"""
        WITH rows AS ({_ROWS}), ranked AS (
            SELECT *, row_number() OVER w AS rank, first_value(key) OVER w AS first_key,
                   first_value(origin) OVER w AS first_origin, first_value(source) OVER w AS first_source
            FROM rows WHERE n_images > 0 WINDOW w AS (PARTITION BY sig ORDER BY gid, shard, idx)
        )
        SELECT gid, shard, key, source, 'same images as ' || first_key || ' (' || first_origin || ')', first_source
        FROM ranked WHERE rank > 1 ORDER BY gid, shard, idx
    """,
}


def connect_sidecars(sidecars: Sidecars, already: GlobalDrops) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with tables ``files`` (gid, shard, path) and ``gone`` (what earlier global steps
    dropped), for queries over the staged sidecars that skip dropped samples."""
    con = duckdb.connect()
    fill_sidecar_tables(con, sidecars, already)
    return con


def fill_sidecar_tables(con: duckdb.DuckDBPyConnection, sidecars: Sidecars, already: GlobalDrops) -> None:
    """Create and fill ``files`` and ``gone`` in ``con`` (see :func:`connect_sidecars`)."""
    con.execute("CREATE TABLE files (gid INTEGER, shard INTEGER, path VARCHAR)")
    con.executemany("INSERT INTO files VALUES (?, ?, ?)", [(g, s, str(p)) for g, s, p in sidecars])
    con.execute("CREATE TABLE gone (gid INTEGER, shard INTEGER, key VARCHAR)")
    gone = [(g, s, k) for (g, s), keys in already.items() for k in keys]
    if gone:
        con.executemany("INSERT INTO gone VALUES (?, ?, ?)", gone)


def find_global_drops(reason: str, step: str, sidecars: Sidecars, already: GlobalDrops) -> GlobalDrops:
    """Samples that ``step`` drops for ``reason``; ``sidecars`` are (partition, shard, parquet) in dataset order."""
    found: GlobalDrops = {}
    if not sidecars:
        return found
    con = connect_sidecars(sidecars, already)
    rows = con.execute(_QUERIES[reason], [[str(p) for _, _, p in sidecars]]).fetchall()
    con.close()
    for gid, shard, key, source, detail, other in rows:
        found.setdefault((gid, shard), {})[key] = GlobalDrop(source, step, reason, detail, other)
    return found


class _ExactDuplicates(GlobalStep):
    """A duplicate found by one of the DuckDB queries above: its one drop reason names the query."""

    @classmethod
    def find(
        cls, cfg: Any, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        (reason,) = cls.drop_reasons
        return GlobalFindings(find_global_drops(reason, label, sidecars, already))


class UniqueKey(_ExactDuplicates):
    """Always on, first of the global steps (no recipe config): keys must be unique for webdataset and wids."""

    drop_reasons: ClassVar[dict[str, str]] = {
        "duplicate_key": "a key already used earlier in the dataset (the first one wins)"
    }


class ExactImageDedup(_ExactDuplicates):
    config = ExactImageDedupStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "duplicate_image": "the same images (sha256 of each) as an earlier sample"
    }
