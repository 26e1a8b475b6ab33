"""``keep_top``: the best-scoring fraction of each source (or of the build) by a sidecar score (global), e.g.
DataComp's CLIP-score top 30%. Per group, the ``ceil(fraction * n)`` samples with the highest scores stay
(``lowest: true``: the lowest), ties broken by dataset order, so the cut is deterministic; samples without the
score are kept and not counted in ``n``."""

from __future__ import annotations

import decimal
from typing import ClassVar

from curation.recipe.models import KeepTopStep
from curation.steps.contract import GlobalContext, GlobalDrop, GlobalDrops, GlobalFindings, GlobalStep
from curation.steps.dedup import Sidecars, connect_sidecars

NOT_TOP = "below_top_fraction"

_QUERY = """
    WITH rows AS (
        SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source, map_extract(r.scores, $score)[1] AS score
        FROM read_parquet($paths, filename = true) r JOIN files f ON r.filename = f.path
        ANTI JOIN gone g ON g.gid = f.gid AND g.shard = f.shard AND g.key = r.key
    ), scored AS (
        SELECT *, CASE WHEN $per_source THEN source ELSE '' END AS grp
        FROM rows WHERE score IS NOT NULL AND NOT isnan(score)
    ), ranked AS (
        SELECT *, row_number() OVER (PARTITION BY grp ORDER BY {order}, gid, shard, idx) AS rank,
               count(*) OVER (PARTITION BY grp) AS n
        FROM scored
    )
    SELECT gid, shard, key, source, score, ceil($fraction * n) AS keep, n FROM ranked
    WHERE rank > ceil($fraction * n) ORDER BY gid, shard, idx
"""


class KeepTop(GlobalStep):
    config = KeepTopStep
    drop_reasons: ClassVar[dict[str, str]] = {NOT_TOP: "not among the best-scoring fraction of its source"}

    @classmethod
    def find(
        cls, cfg: KeepTopStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        found: GlobalDrops = {}
        if not sidecars:
            return GlobalFindings(found)
        con = connect_sidecars(sidecars, already)
        query = _QUERY.format(order="score ASC" if cfg.lowest else "score DESC")
        paths = [str(p) for _, _, p in sidecars]
        params = {
            "score": cfg.score,
            "paths": paths,
            "per_source": cfg.per == "source",
            # exact decimal arithmetic: ceil(0.3 * 10) must be 3, not 4 from 0.30000000000000004 * 10
            "fraction": decimal.Decimal(repr(cfg.fraction)),
        }
        rows = con.execute(query, params).fetchall()
        con.close()
        side = "lowest" if cfg.lowest else "highest"
        for gid, shard, key, source, score, keep, n in rows:
            detail = f"{cfg.score} {score:g} is not among the {int(keep):,} {side} of {n:,}"
            found.setdefault((gid, shard), {})[key] = GlobalDrop(source, label, NOT_TOP, detail)
        return GlobalFindings(found)
