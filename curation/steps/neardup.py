"""Near-duplicate global steps over the staged sidecars, in dataset order (kept-first, greedy):

- ``near_dup_images``: perceptual hashes from the sidecars, searched out of core with multi-index hashing
  (:mod:`curation.dedup.image_search`); a sample whose images are all within ``max_distance`` bits of an
  earlier kept sample's is ``near_duplicate_image``.
- ``near_dup_text``: MinHash signatures staged by the workers, searched out of core with LSH bands
  (:mod:`curation.dedup.lsh`); a sample whose estimated Jaccard similarity to an earlier kept sample sharing
  a band is >= ``threshold`` is ``near_duplicate_text``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import pyarrow as pa

from curation.build.features import minhash_file
from curation.dedup import search_db
from curation.dedup.image_search import HashSearch
from curation.dedup.lsh import Banding, SignatureSearch, banding_for
from curation.recipe import NearDupImagesStep, NearDupTextStep
from curation.steps.contract import GlobalContext, GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep
from curation.steps.dedup import Sidecars, fill_sidecar_tables

_ROWS = """
    SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source, r.origin, r.{column} AS hashes,
           array_to_string(list_sort(r.image_sha256), ',') AS image_set
    FROM read_parquet(?, filename = true) r JOIN files f ON r.filename = f.path
    ANTI JOIN gone g ON g.gid = f.gid AND g.shard = f.shard AND g.key = r.key
"""


def near_duplicate_images(
    cfg: NearDupImagesStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
) -> GlobalDrops:
    """The sidecars' hashes go into a DuckDB file under ``_work`` and are searched there (out of core, the
    hash chunks on the executor's workers); only the duplicates come back to Python."""
    if not sidecars:
        return {}
    db = _database(context, label)
    con = HashSearch.create(db, cfg.memory_mb, context.threads)
    try:
        scope = ["r.source"] if cfg.scope == "source" else []
        _stage_rows(con, sidecars, already, f"image_{cfg.hash}", "len(r.hashes) > 0", [*scope, "len(r.hashes)"])
        con.execute("INSERT INTO hashes SELECT pos, grp, payload[1], payload[2:] FROM rows")
    finally:
        con.close()
    pairs = HashSearch(db, cfg.memory_mb, context.threads).run(cfg.max_distance, context.imap)
    distance = "list_max(list_transform(list_zip(d.payload, k.payload), lambda x: bit_count(xor(x[1], x[2]))))"
    found: GlobalDrops = {}
    for gid, shard, key, source, other_key, other_origin, other_source, bits in _duplicates(
        db, pairs, cfg.memory_mb, context.threads, distance
    ):
        detail = f"near-duplicate ({cfg.hash} distance {bits}) of {other_key} ({other_origin})"
        found.setdefault((gid, shard), {})[key] = GlobalDrop(
            source, label, "near_duplicate_image", detail, other_source
        )
    return found


def near_duplicate_texts(
    cfg: NearDupTextStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
) -> GlobalDrops:
    """The staged signatures go into a DuckDB file under ``_work`` and are searched there (out of core, the
    bands on the executor's workers); only the duplicates come back to Python."""
    if not sidecars:
        return {}
    db = _database(context, label)
    con = SignatureSearch.create(db, cfg.memory_mb, context.threads)
    try:
        con.execute("CREATE TABLE minhash (gid INTEGER, path VARCHAR)")
        partitions = sorted({(gid, str(path.parent / minhash_file(label))) for gid, _, path in sidecars})
        con.executemany("INSERT INTO minhash VALUES (?, ?)", partitions)
        signatures = """
            SELECT m.gid, CAST(split_part(h.shard, '.', 1) AS INTEGER) AS shard, h."index" AS idx, h.sig
            FROM read_parquet(?, filename = true) h JOIN minhash m ON h.filename = m.path WHERE h.sig IS NOT NULL
        """
        groups = [*(["r.source"] if cfg.scope == "source" else []), *(["r.image_set"] if cfg.same_images else [])]
        _stage_rows(con, sidecars, already, "n_images", "TRUE", groups, (signatures, [p for _, p in partitions]))
        con.execute("INSERT INTO sigs SELECT pos, grp, payload FROM rows")
        con.execute("ALTER TABLE rows DROP COLUMN payload")  # one copy of the signatures is enough
    finally:
        con.close()
    banding = Banding(cfg.bands, cfg.rows) if cfg.bands and cfg.rows else banding_for(cfg.threshold, cfg.num_perm)
    pairs = SignatureSearch(db, cfg.num_perm, cfg.memory_mb, context.threads).run(
        cfg.threshold, banding, cfg.verify, context.imap
    )
    found: GlobalDrops = {}
    for gid, shard, key, source, other_key, other_origin, other_source, _ in _duplicates(
        db, pairs, cfg.memory_mb, context.threads, "NULL"
    ):
        detail = f"near-duplicate text (MinHash Jaccard >= {cfg.threshold}) of {other_key} ({other_origin})"
        drop = GlobalDrop(source, label, "near_duplicate_text", detail, other_source)
        found.setdefault((gid, shard), {})[key] = drop
    return found


def _database(context: GlobalContext, label: str) -> Path:
    return context.work / f"near-dup-{label}" / "search.duckdb"  # step labels are file-name safe


def _stage_rows(
    con: duckdb.DuckDBPyConnection,
    sidecars: Sidecars,
    already: GlobalDrops,
    column: str,
    where: str,
    groups: list[str],
    joined: tuple[str, list[str]] | None = None,
) -> None:
    """Table ``rows`` (pos, gid, shard, key, source, origin, grp, payload) of the samples still in the build
    that match ``where``: ``pos`` numbers them in dataset order, ``grp`` numbers the distinct values of the
    ``groups`` expressions, ``payload`` is the sidecar's ``column`` or, with ``joined`` (a query with gid,
    shard, idx and sig, and its files), the joined ``sig`` (samples without one are left out)."""
    fill_sidecar_tables(con, sidecars, already)
    group = ", ".join(groups) or "NULL"
    payload, join, params = "r.hashes", "", [[str(p) for _, _, p in sidecars]]
    if joined is not None:
        payload, join = "s.sig", f"JOIN ({joined[0]}) s ON s.gid = r.gid AND s.shard = r.shard AND s.idx = r.idx"
        params.append(joined[1])
    con.execute(
        f"""
        CREATE TABLE rows AS
        WITH r AS ({_ROWS.format(column=column)})
        SELECT row_number() OVER (ORDER BY r.gid, r.shard, r.idx) - 1 AS pos, r.gid, r.shard, r.key, r.source,
               r.origin, dense_rank() OVER (ORDER BY {group}) AS grp, {payload} AS payload
        FROM r {join} WHERE {where}
        """,
        params,
    )


def _duplicates(db: Path, pairs: np.ndarray, memory_mb: int, threads: int, extra: str) -> list[tuple]:
    """Per duplicate in dataset order: its (gid, shard, key, source), the kept sample's (key, origin, source)
    and ``extra`` (an SQL expression over the duplicate ``d`` and kept ``k`` rows). Removes the database."""
    con = search_db.connect(db, memory_mb, threads)
    try:
        con.register("pairs", pa.table({"dup": pairs[:, 0], "kept": pairs[:, 1]}))
        return con.execute(
            f"""
            SELECT d.gid, d.shard, d.key, d.source, k.key, k.origin, k.source, {extra}
            FROM pairs p JOIN rows d ON d.pos = p.dup JOIN rows k ON k.pos = p.kept ORDER BY p.dup
            """
        ).fetchall()
    finally:
        con.close()
        shutil.rmtree(db.parent, ignore_errors=True)


class NearDupImages(GlobalStep):
    config = NearDupImagesStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "near_duplicate_image": "every image within max_distance bits of an earlier kept sample's"
    }

    @classmethod
    def image_hashes(cls, cfg: NearDupImagesStep) -> set[str]:
        return {cfg.hash}

    @classmethod
    def find(
        cls, cfg: NearDupImagesStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        return GlobalFindings(near_duplicate_images(cfg, label, sidecars, already, context))


class NearDupText(GlobalStep):
    config = NearDupTextStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "near_duplicate_text": "MinHash Jaccard similarity to an earlier kept sample >= threshold"
    }

    @classmethod
    def minhash_text(cls, cfg: NearDupTextStep) -> str | None:
        return cfg.text

    @classmethod
    def find(
        cls, cfg: NearDupTextStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        return GlobalFindings(near_duplicate_texts(cfg, label, sidecars, already, context))
