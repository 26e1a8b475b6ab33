"""Commit staged partitions into the final ``NAME-000000.tar`` series, in dataset order.

Idempotent: a final shard whose ``.tar`` exists is done (the tar is renamed into place last). Staged
shards without global drops are renamed (no copy); shards with global drops are rewritten without them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.faults import crash_point
from curation.partition import partition_dir, read_partition_stats
from curation.rejects import RejectsWriter
from curation.sample import Drop
from curation.steps.dedup import GlobalDrop, GlobalDrops
from curation.steps.merge import merged_turns
from schemas import SftRecord, Turn
from shards.atomic import HashingWriter, tmp_path
from shards.codec import decode_sample, encode_record
from shards.manifest import ShardInfo
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.tokens import count_record, make_token_counter
from shards.writer import write_shard_metadata


def _done(out: Path, stem: str) -> ShardInfo | None:
    if not (out / f"{stem}.tar").exists():
        return None
    return ShardInfo.from_stats(stem, json.loads((out / f"{stem}.stats.json").read_text()))


@dataclass
class Growth:
    """Conversations that ``merge_qa`` grows: per staged shard, head key -> merged samples (turns in ``db``)."""

    patches: dict[tuple[int, int], dict[str, list]] = field(default_factory=dict)
    db: Path | None = None
    tokenizer_type: str = "regex"
    tokenizer_path: str | None = None

    def apply(self, where: tuple[int, int], key: str, members: dict[str, bytes]) -> dict[str, bytes] | None:
        """The head's members with the merged turns appended (None when ``key`` does not grow)."""
        if key not in self.patches.get(where, {}):
            return None
        record = decode_sample(key, members)
        assert isinstance(record, SftRecord) and self.db is not None  # merge_qa grows sft conversations only
        extra = [Turn.model_construct(user=u, assistant=a) for u, a in merged_turns(self.db, where, key)]
        return encode_record(record.model_copy(update={"turns": [*record.turns, *extra]}))

    def counter(self):
        return make_token_counter(self.tokenizer_type, self.tokenizer_path)


@dataclass
class ShardCommit:
    """One final shard: the staged shard it comes from, its name, and what it loses and gains."""

    where: tuple[int, int]  # (partition, staged shard number)
    staged: dict
    stem: str
    dropped: dict[str, GlobalDrop]  # key -> why a global step dropped it
    growth: Growth


def plan_commit(
    work: Path, prefix: str, gids: list[int], drops: GlobalDrops, growth: Growth | None = None
) -> list[ShardCommit]:
    """The final shards in dataset order (staged shards that lost every sample have none)."""
    growth = growth or Growth()
    plan: list[ShardCommit] = []
    for gid in gids:
        for staged in read_partition_stats(work, gid)["shards"]:
            where = (gid, int(staged["name"].split(".")[0]))
            dropped = drops.get(where, {})
            if dropped and len(dropped) >= staged["samples"]:
                continue
            mine = Growth({where: growth.patches[where]} if where in growth.patches else {}, growth.db,
                          growth.tokenizer_type, growth.tokenizer_path)  # fmt: skip
            plan.append(ShardCommit(where, staged, f"{prefix}-{len(plan):06d}", dropped, mine))
    return plan


def commit_shard(work: Path, out: Path, item: ShardCommit) -> ShardInfo:
    """Move one staged shard into place (renamed when unchanged, rewritten otherwise). Idempotent, and
    independent of every other shard: executors may run many at once, on any node that mounts ``out``."""
    info = _done(out, item.stem)
    if info is not None:
        return info
    where, staged = item.where, item.staged
    pdir = partition_dir(work, where[0])
    table = pq.read_table(pdir / staged["sidecar"])
    staged_stats = json.loads((pdir / staged["stats"]).read_text())
    extra = {"reencoded_images": staged_stats.get("reencoded_images", 0)}
    if not item.dropped and where not in item.growth.patches:
        info = write_shard_metadata(
            out, item.stem, table=table, sha256=staged["sha256"], size=staged["bytes"], extra_stats=extra
        )
        os.replace(pdir / staged["name"], out / info.name)
        return info
    return _rewrite(pdir / staged["name"], out, item.stem, table, set(item.dropped), extra, item.growth, where)


def commit_shards(
    work: Path,
    out: Path,
    prefix: str,
    gids: list[int],
    drops: GlobalDrops,
    growth: Growth | None = None,
    run_all: Callable[[Callable[..., ShardInfo], list[tuple]], Iterator[ShardInfo]] | None = None,
) -> tuple[list[ShardInfo], dict[int, list[ShardInfo]]]:
    """The final shards in order, and which of them each partition produced. ``run_all`` runs
    ``commit_shard`` over the shards and yields the results in order (default: here, one after another)."""
    plan = plan_commit(work, prefix, gids, drops, growth)
    run_all = run_all or (lambda fn, args: (fn(*a) for a in args))
    final: list[ShardInfo] = []
    by_partition: dict[int, list[ShardInfo]] = {gid: [] for gid in gids}
    for item, info in zip(plan, run_all(commit_shard, [(work, out, item) for item in plan]), strict=True):
        final.append(info)
        by_partition[item.where[0]].append(info)
        crash_point("commit_shard")
    return final, by_partition


def _rewrite(
    src: Path,
    out: Path,
    stem: str,
    table: pa.Table,
    dropped: set[str],
    extra: dict,
    growth: Growth,
    where: tuple[int, int],
) -> ShardInfo:
    """Write the shard without its dropped samples and with its grown conversations."""
    tmp = tmp_path(out / f"{stem}.tar")
    grown: dict[str, dict[str, int]] = {}
    with open(tmp, "wb") as f:
        hashing = HashingWriter(f)
        tar = TarStream(hashing)
        for key, members in iter_members(src):
            if key in dropped:
                continue
            patched = growth.apply(where, key, members)
            nbytes = tar.add_sample(key, patched or members)
            if patched is not None:
                grown[key] = _sidecar_counts(decode_sample(key, patched), nbytes, growth.counter())
        tar.close()
        f.flush()
        os.fsync(f.fileno())
    crash_point("rewrite_tar_written")
    keys = pa.array(sorted(dropped), pa.string())
    gone = pc.is_in(table.column("key"), keys)  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    kept = table.filter(pc.invert(gone))  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    if grown:
        kept = _update_rows(kept, grown)
    index = kept.schema.get_field_index("index")
    kept = kept.set_column(index, kept.schema.field(index), pa.array(range(kept.num_rows), pa.int32()))
    info = write_shard_metadata(
        out, stem, table=kept, sha256=hashing.sha256.hexdigest(), size=hashing.size, extra_stats=extra
    )
    os.replace(tmp, out / info.name)
    return info


def _sidecar_counts(record, nbytes: int, counter) -> dict[str, int]:
    text_tokens, answer_tokens = count_record(counter, record)
    return {
        "turns": record.num_turns(),
        "text_tokens": text_tokens,
        "answer_tokens": answer_tokens,
        "bytes": nbytes,
    }


def _update_rows(table: pa.Table, grown: dict[str, dict[str, int]]) -> pa.Table:
    keys = table.column("key").to_pylist()
    for column in ("turns", "text_tokens", "answer_tokens", "bytes"):
        i = table.schema.get_field_index(column)
        values = table.column(column).to_pylist()
        values = [grown[k][column] if k in grown else v for k, v in zip(keys, values, strict=True)]
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    return table


def commit_rejects(work: Path, out: Path, prefix: str, gids: list[int], drops: GlobalDrops) -> list[ShardInfo]:
    """Partition rejects (renamed), then rejects of global steps (rewritten, deterministic)."""
    rdir = out / "rejects"
    rdir.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo] = []
    index = 0
    for gid in gids:
        pdir = partition_dir(work, gid) / "rejects"
        for staged in read_partition_stats(work, gid)["rejects"]:
            stem = f"{prefix}-rejects-{index:06d}"
            index += 1
            for suffix, name in (
                (".parquet", staged["sidecar"]),
                (".stats.json", staged["stats"]),
                (".tar", staged["name"]),
            ):
                if (pdir / name).exists():
                    os.replace(pdir / name, rdir / f"{stem}{suffix}")
            infos.append(ShardInfo.from_stats(stem, staged, folder="rejects"))
    if drops:
        for stale in rdir.glob(f"{prefix}-rejects-*"):
            if int(stale.name[len(prefix) + 9 : len(prefix) + 15]) >= index:
                stale.unlink()
        writer = RejectsWriter(rdir, prefix, start_index=index, folder="rejects")
        for gid in gids:
            pdir = partition_dir(work, gid)
            for staged in read_partition_stats(work, gid)["shards"]:
                dropped = drops.get((gid, int(staged["name"].split(".")[0])), {})
                if not dropped:
                    continue
                sidecar = pq.read_table(pdir / staged["sidecar"], columns=["key", "origin"])
                origins = dict(
                    zip(sidecar.column("key").to_pylist(), sidecar.column("origin").to_pylist(), strict=True)
                )
                for key, members in iter_members(pdir / staged["name"]):
                    drop = dropped.get(key)
                    if drop is not None:
                        record = decode_sample(key, members)
                        writer.add(drop.step, Drop(drop.reason, drop.source, origins[key], key, drop.detail, record))
        infos.extend(writer.close())
    return infos
