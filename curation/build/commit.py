"""Commit staged partitions into the final ``NAME-000000.tar`` series, in dataset order.

Idempotent: a final shard whose ``.tar`` exists is done (the tar is renamed into place last). Staged
shards without global drops are renamed (no copy); shards with global drops are rewritten without them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.build.faults import crash_point
from curation.build.messages import Staged, StagedShard
from curation.build.rejects import RejectsWriter
from curation.sample import Drop
from curation.steps.contract import GlobalDrop, GlobalDrops, ShardRewrite, Where
from shards.atomic import HashingWriter, tmp_path
from shards.codec import decode_sample
from shards.manifest import ShardInfo
from shards.reader import iter_members
from shards.tarstream import TarStream
from shards.tokens import TokenCounter, count_record, make_token_counter
from shards.writer import write_shard_metadata

_REJECT_SUFFIXES = (".parquet", ".stats.json", ".tar")  # the tar last: a shard is complete once its tar exists
Tokenizer = tuple[str, str | None]  # (type, path) of the recipe's tokenizer: grown samples are counted again


def _done(out: Path, stem: str) -> ShardInfo | None:
    if not (out / f"{stem}.tar").exists():
        return None
    return ShardInfo.from_stats(stem, json.loads((out / f"{stem}.stats.json").read_text()))


@dataclass(frozen=True)
class ShardCommit:
    """One final shard: the staged shard it comes from, its name, and what it loses and how it changes."""

    staged: StagedShard
    stem: str
    dropped: dict[str, GlobalDrop]  # key -> why a global step dropped it
    rewrites: tuple[ShardRewrite, ...]  # of this shard only, applied in order
    tokenizer: Tokenizer

    @property
    def unchanged(self) -> bool:
        return not self.dropped and not self.rewrites


def plan_commit(
    staged: list[StagedShard],
    prefix: str,
    drops: GlobalDrops,
    rewrites: list[ShardRewrite] | None = None,
    tokenizer: Tokenizer = ("regex", None),
) -> list[ShardCommit]:
    """The final shards in dataset order (staged shards that lost every sample have none)."""
    plan: list[ShardCommit] = []
    changing = [(r, r.shards()) for r in rewrites or ()]  # once per rewrite, not once per shard
    for shard in staged:
        dropped = drops.get(shard.where, {})
        if dropped and len(dropped) >= shard.info.samples:
            continue
        mine = tuple(r.only(shard.where) for r, wheres in changing if shard.where in wheres)
        plan.append(ShardCommit(shard, f"{prefix}-{len(plan):06d}", dropped, mine, tokenizer))
    return plan


def commit_shard(out: Path, item: ShardCommit) -> ShardInfo:
    """Move one staged shard into place (renamed when unchanged, rewritten otherwise). Idempotent, and
    independent of every other shard: executors may run many at once, on any node that mounts ``out``."""
    info = _done(out, item.stem)
    if info is not None:
        return info
    staged = item.staged
    table = pq.read_table(staged.sidecar)
    extra = {"reencoded_images": json.loads(staged.stats.read_text()).get("reencoded_images", 0)}
    if item.unchanged:
        info = write_shard_metadata(
            out, item.stem, table=table, sha256=staged.info.sha256, size=staged.info.bytes, extra_stats=extra
        )
        os.replace(staged.tar, out / info.name)
        return info
    return _rewrite(item, out, table, extra)


def commit_shards(
    plan: list[ShardCommit],
    out: Path,
    run_all: Callable[[Callable[..., ShardInfo], list[tuple]], Iterator[ShardInfo]] | None = None,
) -> list[ShardInfo]:
    """The final shards, in order. ``run_all`` runs ``commit_shard`` over the shards and yields the results
    in order (default: here, one after another)."""
    run_all = run_all or (lambda fn, args: (fn(*a) for a in args))
    final: list[ShardInfo] = []
    for info in run_all(commit_shard, [(out, item) for item in plan]):
        final.append(info)
        crash_point("commit_shard")
    if len(final) != len(plan):
        raise RuntimeError(f"the commit returned {len(final)} shards for a plan of {len(plan)} (a bug)")
    return final


def shards_by_partition(plan: list[ShardCommit], final: list[ShardInfo]) -> dict[int, list[ShardInfo]]:
    """The final shards each partition produced (partitions whose samples all left have none)."""
    by_partition: dict[int, list[ShardInfo]] = {}
    for item, info in zip(plan, final, strict=True):
        by_partition.setdefault(item.staged.partition, []).append(info)
    return by_partition


def _rewrite(item: ShardCommit, out: Path, table: pa.Table, extra: dict) -> ShardInfo:
    """Write the shard without its dropped samples and with its rewritten ones."""
    tmp = tmp_path(out / f"{item.stem}.tar")
    where = item.staged.where
    counter: TokenCounter | None = None
    grown: dict[str, dict[str, int]] = {}
    with open(tmp, "wb") as f:
        hashing = HashingWriter(f)
        tar = TarStream(hashing)
        for key, members in iter_members(item.staged.tar):
            if key in item.dropped:
                continue
            patched = _apply(item.rewrites, where, key, members)
            nbytes = tar.add_sample(key, patched or members)
            if patched is not None:
                counter = counter or make_token_counter(*item.tokenizer)
                grown[key] = _sidecar_counts(decode_sample(key, patched), nbytes, counter)
        tar.close()
        f.flush()
        os.fsync(f.fileno())
    crash_point("rewrite_tar_written")
    keys = pa.array(sorted(item.dropped), pa.string())
    gone = pc.is_in(table.column("key"), keys)  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    kept = table.filter(pc.invert(gone))  # pyright: ignore[reportAttributeAccessIssue]  # generated functions
    if grown:
        kept = _update_rows(kept, grown)
    index = kept.schema.get_field_index("index")
    kept = kept.set_column(index, kept.schema.field(index), pa.array(range(kept.num_rows), pa.int32()))
    info = write_shard_metadata(
        out, item.stem, table=kept, sha256=hashing.sha256.hexdigest(), size=hashing.size, extra_stats=extra
    )
    os.replace(tmp, out / info.name)
    return info


def _apply(
    rewrites: tuple[ShardRewrite, ...], where: Where, key: str, members: dict[str, bytes]
) -> dict[str, bytes] | None:
    changed = None
    for rewrite in rewrites:
        changed = rewrite.apply(where, key, changed or members) or changed
    return changed


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


def commit_rejects(staged: Staged, out: Path, prefix: str, drops: GlobalDrops) -> list[ShardInfo]:
    """Partition rejects (renamed), then rejects of global steps (rewritten, deterministic)."""
    rdir = out / "rejects"
    rdir.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo] = []
    for index, shard in enumerate(staged.rejects()):
        stem = f"{prefix}-rejects-{index:06d}"
        for suffix, path in zip(_REJECT_SUFFIXES, (shard.sidecar, shard.stats, shard.tar), strict=True):
            if path.exists():
                os.replace(path, rdir / f"{stem}{suffix}")
        infos.append(ShardInfo.from_stats(stem, shard.info.model_dump(), folder="rejects"))
    if drops:
        first_global = len(infos)
        # A killed attempt may have left global rejects: everything but the partition rejects just placed goes.
        placed = {f"{prefix}-rejects-{i:06d}{suffix}" for i in range(first_global) for suffix in _REJECT_SUFFIXES}
        for stale in rdir.glob(f"{prefix}-rejects-*"):
            if stale.name not in placed:
                stale.unlink()
        writer = RejectsWriter(rdir, prefix, start_index=first_global, folder="rejects")
        for shard in staged.shards():
            dropped = drops.get(shard.where, {})
            if not dropped:
                continue
            sidecar = pq.read_table(shard.sidecar, columns=["key", "origin"])
            origins = dict(zip(sidecar.column("key").to_pylist(), sidecar.column("origin").to_pylist(), strict=True))
            for key, members in iter_members(shard.tar):
                drop = dropped.get(key)
                if drop is not None:
                    record = decode_sample(key, members)
                    writer.add(drop.step, Drop(drop.reason, drop.source, origins[key], key, drop.detail, record))
        infos.extend(writer.close())
    return infos
