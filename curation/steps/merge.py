"""``merge_qa`` (global): QA pairs on the same images become one multi-turn conversation, as in the Cauldron.

Samples with identical images (sha256, in order) within a source (or across sources) merge into the first
one in dataset order: its conversation gains their turns, in order, and they leave the dataset counted as
``merged_into_conversation``. ``max_turns`` starts a new conversation when the next sample would exceed it.

The turns to append are read once from the staged shards into an on-disk SQLite table (memory stays
bounded), and the commit rewrites the shards of the conversations that grew.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from curation.recipe import MergeQaStep
from curation.steps.contract import (
    GlobalContext,
    GlobalDrop,
    GlobalDrops,
    GlobalFindings,
    GlobalStep,
    ShardRewrite,
    Where,
)
from curation.steps.dedup import Sidecars, connect_sidecars
from schemas import SftRecord, Turn
from shards.codec import decode_sample, encode_record
from shards.reader import iter_members

Head = tuple[int, int, str]  # (partition, shard number, key) of the conversation that grows
Patches = dict[Where, dict[str, list[tuple[int, int, str]]]]  # head's shard -> head key -> merged samples

_ROWS = """
    SELECT f.gid, f.shard, r."index" AS idx, r.key, r.source, r.origin, r.turns,
           array_to_string(r.image_sha256, ',') AS sig
    FROM read_parquet(?, filename = true) r JOIN files f ON r.filename = f.path
    ANTI JOIN gone g ON g.gid = f.gid AND g.shard = f.shard AND g.key = r.key
    WHERE r.n_images > 0 AND r.kind = 'sft'
    ORDER BY f.gid, f.shard, r."index"
"""


def find_merges(cfg: MergeQaStep, label: str, sidecars: Sidecars, already: GlobalDrops) -> tuple[GlobalDrops, Patches]:
    if not sidecars:
        return {}, {}
    con = connect_sidecars(sidecars, already)
    rows = con.execute(_ROWS, [[str(p) for _, _, p in sidecars]]).fetchall()
    con.close()
    heads: dict[tuple[str, str], tuple[tuple, int]] = {}  # group -> (head row, its turns so far)
    drops: GlobalDrops = {}
    patches: Patches = {}
    for row in rows:
        gid, shard, _idx, key, source, _origin, turns, sig = row
        group = (source if cfg.scope == "source" else "", sig)
        current = heads.get(group)
        if current is None or (cfg.max_turns is not None and current[1] + turns > cfg.max_turns):
            heads[group] = (row, turns)
            continue
        head, head_turns = current
        heads[group] = (head, head_turns + turns)
        patches.setdefault((head[0], head[1]), {}).setdefault(head[3], []).append((gid, shard, key))
        detail = f"{turns} turn(s) appended to {head[3]} ({head[5]})"
        drops.setdefault((gid, shard), {})[key] = GlobalDrop(source, label, "merged_into_conversation", detail)
    return drops, patches


def stage_merged_turns(patches: Patches, shard_paths: dict[Where, Path], db: Path) -> None:
    """Copy the turns of every merged sample into ``db`` (table ``turns``: head, seq, user, assistant)."""
    wanted: dict[Where, dict[str, tuple[Head, int]]] = {}
    for (hg, hs), heads in patches.items():
        for head_key, merged in heads.items():
            for seq, (gid, shard, key) in enumerate(merged):
                wanted.setdefault((gid, shard), {})[key] = ((hg, hs, head_key), seq)
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE turns (gid INTEGER, shard INTEGER, head TEXT, seq INTEGER, pos INTEGER, user TEXT, "
        "assistant TEXT)"
    )
    for where in sorted(wanted):
        keys = wanted[where]
        for key, members in iter_members(shard_paths[where]):
            if key not in keys:
                continue
            (hg, hs, head_key), seq = keys[key]
            record = decode_sample(key, members)
            assert isinstance(record, SftRecord)  # the merge query selects sft samples only
            con.executemany(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(hg, hs, head_key, seq, pos, t.user, t.assistant) for pos, t in enumerate(record.turns)],
            )
    con.execute("CREATE INDEX heads ON turns (gid, shard, head)")
    con.commit()
    con.close()


def merged_turns(db: Path, where: Where, head_key: str) -> Iterator[tuple[str, str]]:
    con = sqlite3.connect(db)
    try:
        yield from con.execute(
            "SELECT user, assistant FROM turns WHERE gid = ? AND shard = ? AND head = ? ORDER BY seq, pos",
            (where[0], where[1], head_key),
        )
    finally:
        con.close()


@dataclass(frozen=True)
class MergedTurns(ShardRewrite):
    """The conversations ``merge_qa`` grows: per head's staged shard, head key -> merged samples, whose turns
    wait in the SQLite file ``db``."""

    patches: Patches
    db: Path

    def shards(self) -> set[Where]:
        return set(self.patches)

    def changes(self, where: Where) -> set[str]:
        return set(self.patches.get(where, {}))

    def only(self, where: Where) -> MergedTurns:
        return MergedTurns({where: self.patches[where]} if where in self.patches else {}, self.db)

    def apply(self, where: Where, key: str, members: dict[str, bytes]) -> dict[str, bytes] | None:
        if key not in self.patches.get(where, {}):
            return None
        record = decode_sample(key, members)
        assert isinstance(record, SftRecord)  # merge_qa grows sft conversations only
        extra = [Turn.model_construct(user=u, assistant=a) for u, a in merged_turns(self.db, where, key)]
        return encode_record(record.model_copy(update={"turns": [*record.turns, *extra]}))


class MergeQa(GlobalStep):
    config = MergeQaStep
    drop_reasons: ClassVar[dict[str, str]] = {
        "merged_into_conversation": "its turns were appended to the first sample with the same images"
    }

    @classmethod
    def find(
        cls, cfg: MergeQaStep, label: str, sidecars: Sidecars, already: GlobalDrops, context: GlobalContext
    ) -> GlobalFindings:
        drops, patches = find_merges(cfg, label, sidecars, already)
        if not patches:
            return GlobalFindings(drops)
        db = context.work / f"merged_turns-{label}.sqlite"  # step labels are file-name safe
        stage_merged_turns(patches, {(g, n): p.with_suffix(".tar") for g, n, p in sidecars}, db)
        return GlobalFindings(drops, MergedTurns(patches, db))
