"""Near-duplicate global steps over the staged sidecars, in dataset order (kept-first, greedy):

- ``near_dup_images``: perceptual hashes from the sidecars, searched with multi-index hashing; a sample
  whose images are all within ``max_distance`` bits of an earlier kept sample's is ``near_duplicate_image``.
- ``near_dup_text``: MinHash signatures staged by the workers, searched with datasketch's LSH; a sample
  whose estimated Jaccard similarity to an earlier kept sample is >= ``threshold`` is ``near_duplicate_text``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from curation.build.features import minhash_file
from curation.recipe import NearDupImagesStep, NearDupTextStep
from curation.steps.contract import GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep
from curation.steps.dedup import Sidecars, connect_sidecars

_ROWS = """
    SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source, r.origin, r.{column} AS hashes,
           array_to_string(list_sort(r.image_sha256), ',') AS sig
    FROM read_parquet(?, filename = true) r JOIN files f ON r.filename = f.path
    ANTI JOIN gone g ON g.gid = f.gid AND g.shard = f.shard AND g.key = r.key
    ORDER BY f.gid, f.shard, r."index"
"""


def near_duplicate_images(cfg: NearDupImagesStep, label: str, sidecars: Sidecars, already: GlobalDrops) -> GlobalDrops:
    from curation.dedup.hashing import hamming, to_unsigned
    from curation.dedup.index import greedy_image_dedup

    if not sidecars:
        return {}
    con = connect_sidecars(sidecars, already)
    rows = con.execute(_ROWS.format(column=f"image_{cfg.hash}"), [[str(p) for _, _, p in sidecars]]).fetchall()
    con.close()
    samples = [tuple(to_unsigned(h) for h in (r[6] or ())) for r in rows]
    groups = [r[4] for r in rows] if cfg.scope == "source" else None
    matches = greedy_image_dedup(samples, cfg.max_distance, groups)
    found: GlobalDrops = {}
    for row, sample, match in zip(rows, samples, matches, strict=True):
        if match < 0:
            continue
        other = rows[match]
        distance = max(int(hamming(a, b)) for a, b in zip(sample, samples[match], strict=True))
        detail = f"near-duplicate ({cfg.hash} distance {distance}) of {other[3]} ({other[5]})"
        found.setdefault((row[0], row[1]), {})[row[3]] = GlobalDrop(
            row[4], label, "near_duplicate_image", detail, other[4]
        )
    return found


def near_duplicate_texts(
    cfg: NearDupTextStep, label: str, sidecars: Sidecars, already: GlobalDrops, work: Path
) -> GlobalDrops:
    from curation.dedup.minhash import greedy_text_dedup

    if not sidecars:
        return {}
    con = connect_sidecars(sidecars, already)
    partition_dirs = sorted({(gid, path.parent) for gid, _, path in sidecars})
    con.execute("CREATE TABLE sigs (gid INTEGER, shard INTEGER, idx INTEGER, sig BLOB)")
    for gid, pdir in partition_dirs:
        con.execute(
            "INSERT INTO sigs SELECT ?, CAST(split_part(shard, '.', 1) AS INTEGER), \"index\", sig "
            "FROM read_parquet(?)",
            [gid, str(pdir / minhash_file(label))],
        )
    rows = con.execute(
        f"""
        WITH r AS ({_ROWS.format(column="n_images").replace('ORDER BY f.gid, f.shard, r."index"', "")})
        SELECT r.gid, r.shard, r.idx, r.key, r.source, r.origin, s.sig, r.sig
        FROM r JOIN sigs s ON s.gid = r.gid AND s.shard = r.shard AND s.idx = r.idx
        ORDER BY r.gid, r.shard, r.idx
        """,
        [[str(p) for _, _, p in sidecars]],
    ).fetchall()
    con.close()
    signatures = [None if r[6] is None else np.frombuffer(r[6], dtype=np.uint64) for r in rows]
    groups: list | None = None
    if cfg.scope == "source" or cfg.same_images:
        groups = [((r[4] if cfg.scope == "source" else None), (r[7] if cfg.same_images else None)) for r in rows]
    matches = greedy_text_dedup(signatures, cfg.threshold, cfg.num_perm, groups)
    found: GlobalDrops = {}
    for row, match in zip(rows, matches, strict=True):
        if match < 0:
            continue
        other = rows[match]
        detail = f"near-duplicate text (MinHash Jaccard >= {cfg.threshold}) of {other[3]} ({other[5]})"
        found.setdefault((row[0], row[1]), {})[row[3]] = GlobalDrop(
            row[4], label, "near_duplicate_text", detail, other[4]
        )
    return found


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
        cls, cfg: NearDupImagesStep, label: str, sidecars: Sidecars, already: GlobalDrops, work: Path
    ) -> GlobalFindings:
        return GlobalFindings(near_duplicate_images(cfg, label, sidecars, already))


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
        cls, cfg: NearDupTextStep, label: str, sidecars: Sidecars, already: GlobalDrops, work: Path
    ) -> GlobalFindings:
        return GlobalFindings(near_duplicate_texts(cfg, label, sidecars, already, work))
